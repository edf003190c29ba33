"""Argument checks shared by the public entry points: each names the argument and what was expected.

They run once, at the boundary (the public function or command), so the code behind it can trust its input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
from typing import Any

from simharmony.errors import BackendUnavailableError, InvalidInputError

# The largest frame the enhancer and the renderers accept: 4096 x 4096 (a 3840 x 2160 UHD frame fits).
# Beyond it a K = 4 context and the activations need tens of GiB; the allocator's own error comes only
# after gigabytes were taken.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 16384


def resolve_device(spec: Any, what: str = "device") -> Any:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when present) or a ``torch.device`` -> torch.device.
    Anything else is an InvalidInputError naming ``what``; CUDA where there is none a BackendUnavailableError."""
    import torch

    if isinstance(spec, str) and spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(spec, (str, torch.device)):
        raise InvalidInputError(f"{what} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {type(spec).__name__} {spec!r}")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise InvalidInputError(f"{what} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {spec!r}") from e
    if device.type not in ("cpu", "cuda", "meta"):
        raise InvalidInputError(f"{what}={spec!r}: only 'cpu' and 'cuda' devices are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{what}={spec!r} requested but CUDA is not available here; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"{what}={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_hashable(value: Any, what: str) -> Any:
    """``value`` itself if it can key a dict (stream and camera ids); else an InvalidInputError naming ``what``."""
    try:
        hash(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be hashable (a str, int or tuple), got {type(value).__name__} "
                                f"{value!r}") from None
    if not isinstance(value, Hashable):  # pragma: no cover - hash() succeeded, kept for type checkers
        raise InvalidInputError(f"{what} must be hashable, got {type(value).__name__}")
    return value


def check_flag(value: Any, what: str) -> bool:
    """A real bool (numpy's included): ``"false"`` is truthy, so strings and numbers are refused by name."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise InvalidInputError(f"{what} must be True or False, got {type(value).__name__} {value!r}")


def as_finite_number(value: Any, what: str, *, minimum: float | None = None, integer: bool = False) -> float | int:
    """``value`` as a finite float (or int with ``integer``), at least ``minimum``; strings, bools, NaN and
    out-of-range values are InvalidInputErrors naming ``what``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise InvalidInputError(f"{what} must be {kind}, got {type(value).__name__} {value!r}")
    number = int(value) if integer else float(value)
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{what} must be >= {minimum:g}, got {value!r}")
    return number


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Refuse images above :data:`MAX_IMAGE_PIXELS` pixels or :data:`MAX_IMAGE_SIDE` on a side, before any
    memory is allocated for them."""
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{what} is {width}x{height}: larger than the supported {MAX_IMAGE_PIXELS / 1e6:.1f} "
                                f"megapixels ({MAX_IMAGE_SIDE} per side at most); downscale it first")


def arg_int(minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` for integers in [minimum, maximum]: ``--frames 0`` is refused in one line (exit 2)
    instead of rendering one frame, or ``--per-stream -1`` dropping an item."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def arg_float(minimum: float | None = None, maximum: float | None = None, exclusive_minimum: bool = False):
    """An argparse ``type`` for finite floats in [minimum, maximum] ((minimum, maximum] with
    ``exclusive_minimum``); NaN and infinity are refused."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        low_bad = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        if not math.isfinite(value) or low_bad or (maximum is not None and value > maximum):
            low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
            high = "" if maximum is None else f"<= {maximum:g}"
            bounds = " and ".join(b for b in (low, high) if b)
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' + bounds if bounds else ''}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse
