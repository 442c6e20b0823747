"""Model registry (see :mod:`distill.models.registry`) and the classifier interface."""
from distill.models.base import LesionClassifier, ModelOutput
from distill.models.registry import build_model, get_model_spec, list_models, register_model

__all__ = ["LesionClassifier", "ModelOutput", "build_model", "get_model_spec", "list_models", "register_model"]
