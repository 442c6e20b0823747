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


#: Each dataset's class code → the HAM10000/DermaMNIST code it corresponds to. ISIC 2019's AK (actinic
#: keratosis) is part of HAM10000's akiec; its SCC (invasive squamous cell carcinoma) has no counterpart
#: in HAM10000 (akiec's intraepithelial carcinoma is in situ), so it maps to nothing.
_CANONICAL: dict[str, str | None] = {
    "mel": "mel", "nv": "nv", "bcc": "bcc", "ak": "akiec", "akiec": "akiec", "bkl": "bkl", "df": "df",
    "vasc": "vasc", "scc": None,
}
#: The classes whose probabilities sum to "malignant" (melanoma, basal cell carcinoma, akiec/AK, SCC).
MALIGNANT = ("mel", "bcc", "akiec", "ak", "scc")


def canonical(code: str) -> str | None:
    """The HAM10000 code of a class code of any dataset here (``"MEL"`` → ``"mel"``; unknown → itself)."""
    key = str(code).strip().lower()
    return _CANONICAL.get(key, key)


def class_mapping(data_classes: list[str], model_classes: list[str]) -> dict[int, int]:
    """Data label index → model output index, for the classes both know (by :func:`canonical` code).

    Data classes with no counterpart among the model's are absent from the map: their images cannot be
    scored as right or wrong by this model and are left out (callers say how many).
    """
    model_index = {canonical(c): j for j, c in enumerate(model_classes)}
    out: dict[int, int] = {}
    for i, c in enumerate(data_classes):
        code = canonical(c)
        if code is not None and code in model_index:
            out[i] = model_index[code]
    return out


def class_index(class_names: list[str], code: str) -> int | None:
    """Index of the class whose :func:`canonical` code is ``code`` (``"mel"``), None when absent."""
    return next((j for j, c in enumerate(class_names) if canonical(c) == code), None)
