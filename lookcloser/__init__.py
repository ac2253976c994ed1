"""lookcloser: weakly supervised attention for fine-grained visual classification.

Public API::

    from lookcloser import create_model, list_models, open_dataset, load_checkpoint, Predictor
"""

from .data import open_dataset
from .engine.checkpoint import load_checkpoint
from .errors import LookcloserError
from .models import create_model, list_models
from .predict import Predictor

__version__ = "0.1.0"
__all__ = ["LookcloserError", "Predictor", "create_model", "list_models", "load_checkpoint", "open_dataset"]
