"""Registered methods. Importing this package registers them all."""

from . import baseline, rra, tasn, wsdan  # noqa: F401  (registers)
from .base import Method, ModelOutput, SampleInputs
from .registry import check_methods, create_model, list_models, model_options, register_model

__all__ = ["Method", "ModelOutput", "SampleInputs", "check_methods", "create_model", "list_models", "model_options",
           "register_model"]
