"""The version of lookcloser (a leaf module, so that any floor can read it)."""

__version__ = "0.1.0"
