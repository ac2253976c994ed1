"""Registered methods. Importing this package registers them all."""

from . import baseline, rra, tasn, wsdan  # noqa: F401  (registers)
from .base import Method, ModelOutput
from .registry import create_model, list_models, model_options, register_model

__all__ = ["Method", "ModelOutput", "create_model", "list_models", "model_options", "register_model"]
