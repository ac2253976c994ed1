"""User-facing errors.

Every error a user can cause is raised as a :class:`LookcloserError` whose message is one sentence
that names the problem and the fix. The CLI prints the message alone, without a traceback.
"""


class LookcloserError(Exception):
    """An error caused by the user's input (a path, a file, an option), with a one-line fix."""


class BadImageError(LookcloserError):
    """An image file that cannot be decoded (unreadable, truncated or not an image)."""


class NonFiniteLossError(LookcloserError):
    """Training produced a NaN or infinite loss."""
