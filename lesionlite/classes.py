"""Human-readable names of the class codes the lesion datasets use (HAM10000 / DermaMNIST / ISIC 2019).

Manifests carry the short codes the data uses (``mel``); people reading an answer want "melanoma
(mel)". One table, shared by ``serve`` (metadata and web page) and the model card; codes it does not
know are shown as they are.
"""
from __future__ import annotations

FULL_NAMES: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "ak": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
    "scc": "squamous cell carcinoma",
}


def display_name(code: str) -> str:
    """``"melanoma (mel)"`` for a known code, the code itself otherwise."""
    full = FULL_NAMES.get(str(code).strip().lower())
    return f"{full} ({code})" if full else str(code)
