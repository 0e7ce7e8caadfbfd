"""The limits themselves: `Limits` (work in steps, memory, call depth, and the wall-clock backstop), their
defaults, and sizes as people write them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidArgumentError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"  # pickled as a reference: still `DEFAULT` in another process


#: Stands for "the limit in force": the enclosing scope's, else the default one.
DEFAULT: Any = _Default()


@dataclass(frozen=True)
class Limits:
    """What one template may use.

    Attributes:
        max_steps: the work one operation on a template may do (patching and verifying it, checking it, or
            rendering one conversation with it), counted in steps: loop iterations (weighed by the size of the
            loop's body), calls, comparisons and sorts (by the logical size of what they compare), characters
            scanned and built. A count, not a clock: the same template gets the same verdict on any machine
            under any load. None for no limit.
        max_memory: bytes the template may build in that operation: every string, list and dict it makes
            (garbage included) and what it writes; None for no limit.
        max_depth: how deep macro, `caller()` and recursive-loop calls may nest; None for Python's own limit.
        timeout: the wall-clock backstop, in seconds, for what no step can count (None: off). Generous on
            purpose: it depends on how busy the machine is, so the step budget decides every ordinary verdict.

    Example:
        >>> Limits(timeout=2).max_memory == Limits().max_memory == 1 << 30
        True
    """

    timeout: float | None = 60.0
    max_memory: int | None = GIB
    max_depth: int | None = 100
    max_steps: int | None = 50_000_000

    def replace(
        self, *, timeout: Any = DEFAULT, max_memory: Any = DEFAULT, max_depth: Any = DEFAULT, max_steps: Any = DEFAULT
    ) -> Limits:
        """These limits with the given ones changed (`DEFAULT` keeps a value)."""
        return Limits(
            self.timeout if timeout is DEFAULT else _seconds(timeout),
            self.max_memory if max_memory is DEFAULT else _bytes(max_memory),
            self.max_depth if max_depth is DEFAULT else _depth(max_depth),
            self.max_steps if max_steps is DEFAULT else _steps(max_steps),
        )


DEFAULT_LIMITS = Limits()


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not seconds > 0:
        raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {value!r}")
    return seconds


def _bytes(value: Any) -> int | None:
    if value is None:
        return None
    size = parse_size(value) if isinstance(value, str) else int(value)
    if size <= 0:
        raise InvalidArgumentError(f"max_memory must be a positive number of bytes, got {value!r}")
    return size


def _steps(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"max_steps must be a positive number of steps, got {value!r}")
    return int(value)


def _depth(value: Any) -> int | None:
    if value is None:
        return None
    depth = int(value)
    if depth <= 0:
        raise InvalidArgumentError(f"max_depth must be a positive number, got {value!r}")
    return depth


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from `512M`, `1G`, `1.5GiB`, `64k` or a plain number (binary units: 1K = 1024).

    Example:
        >>> parse_size("512M"), parse_size("1G"), parse_size("1.5GiB"), parse_size(4096)
        (536870912, 1073741824, 1610612736, 4096)
    """
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidArgumentError(f"not a size: {text!r} (use e.g. 512M, 1G, 2048K or a number of bytes)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": GIB << 10}[unit])


def format_size(size: float) -> str:
    """A byte count for people.

    Example:
        >>> format_size(1 << 30), format_size(1536 * 1024), format_size(100)
        ('1 GiB', '1.5 MiB', '100 bytes')
    """
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(size)} bytes"


def _format_seconds(seconds: float | None) -> str:
    return f"{seconds:g} s"


#: Steps one byte built counts for: building and writing text is work too, though far cheaper per byte than a
#: loop iteration is.
STEPS_PER_BYTE = 1 / 64


def _late_detail(timeout: float | None) -> str:
    return (
        f"the template ran past the {_format_seconds(timeout)} wall-clock backstop (a safety net that depends on "
        "how busy the machine is; the step budget limits the work): raise it with --timeout SECONDS (timeout=), "
        "or turn it off with --timeout none (timeout=None)"
    )
