"""Method options: every option's type comes from its annotation in the method's signature and its range
from the method's ``option_ranges``; :func:`check_options` checks both, in one place, before any model is
built (so a bad ``-o key=value`` fails before a run folder is touched).
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import LookcloserError


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``lo``/``hi`` bounds (None: unbounded), open or closed, plus special values.

    Attributes:
        lo, hi: bounds.
        lo_open, hi_open: exclude the bound itself.
        also: extra allowed values outside the bounds (e.g. 0 meaning "off").
        why: a few words on what the special values mean, quoted in the error.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    why: str = ""

    def __contains__(self, v) -> bool:
        if v in self.also:
            return True
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        text = f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}{')' if self.hi_open or self.hi is None else ']'}"
        if self.also:
            text += " or " + " or ".join(repr(a) for a in self.also)
        return text + (f" ({self.why})" if self.why else "")


def _type_name(t) -> str:
    return getattr(t, "__name__", str(t)).replace("typing.", "")


def _coerce(method: str, key: str, value: Any, ann) -> Any:
    """``value`` as the annotated type (ints stay ints; ints are accepted for floats), or an error."""
    origin = typing.get_origin(ann)
    bad = LookcloserError(f"{method} option {key} must be {_describe_type(ann)}, got {value!r}; "
                          f"write it as -o {key}=VALUE")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(method, key, value, a)
            except LookcloserError:
                pass
        raise bad
    if origin is tuple:
        args = typing.get_args(ann)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(method, key, v, a) for v, a in zip(value, args))
    if ann is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if ann is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def _describe_type(ann) -> str:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe_type(a) for a in typing.get_args(ann))
    if origin is tuple:
        return f"a pair like [0.4, 0.6] ({', '.join(_describe_type(a) for a in typing.get_args(ann))})"
    return {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}.get(
        ann, _type_name(ann))


def signature(factory) -> inspect.Signature:
    """The factory's signature with its annotations resolved to types."""
    return inspect.signature(factory, eval_str=True)


def check_options(method: str, factory, options: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce a method's keyword options against its signature and ``option_ranges``.

    Args:
        method: the registered name (for messages).
        factory: the registered class or function.
        options: ``{name: value}`` as given (YAML scalars from the command line or a recipe).

    Returns:
        The options with their values coerced to the annotated types.

    Raises:
        LookcloserError: an unknown option, a value of the wrong type, or one outside its range, in one
            sentence naming the option, what it must be and how to give it.
    """
    params = signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise LookcloserError(f"method {method!r} has no option(s) {unknown}; its options are: "
                              f"{', '.join(sorted(params))} (see `lookcloser models`)")
    ranges = getattr(factory, "option_ranges", {})
    out = {}
    for key, value in options.items():
        ann = params[key].annotation
        v = _coerce(method, key, value, ann) if ann is not inspect.Parameter.empty else value
        allowed = ranges.get(key)
        if allowed is not None and v is not None:
            for item in (v if isinstance(v, tuple) else (v,)):
                ok = item in allowed
                if not ok:
                    what = allowed.describe() if isinstance(allowed, Range) else "one of " + ", ".join(map(str, allowed))
                    raise LookcloserError(f"{method} option {key} must be {what}, got {value!r}")
            if isinstance(v, tuple) and list(v) != sorted(v):
                raise LookcloserError(f"{method} option {key} must be [low, high] with low <= high, got {value!r}")
        out[key] = v
    return out


def defaults(factory) -> dict[str, Any]:
    """The keyword options a factory accepts, with their defaults."""
    return {k: p.default for k, p in signature(factory).parameters.items()
            if p.kind == p.KEYWORD_ONLY or p.default is not p.empty}
