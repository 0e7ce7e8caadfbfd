"""What a marker looks like: the special tokens templates write around turns (`<|im_end|>`, `</s>`, `[INST]`).

Truth, layout, the patcher's notes and the delimiter fallback all read markers off rendered text; they share
these rules, so a string that is one marker to one step is one marker to every step.
"""

from __future__ import annotations

import re

__all__ = ["CLOSERS", "MARKER", "MARKER_AT_END", "OPENERS", "ROLE_STOP", "last_marker"]

# One marker written as one piece: `<|user|>`, `<｜end▁of▁sentence｜>`, `[/INST]`, `</s>`, `<end_of_turn>`.
_MARKER = r"<[^<>\s]{1,40}>|\[[^\[\]\s]{1,40}\]"
MARKER = re.compile(_MARKER)
#: A marker that ends the text searched (`search(text, 0, end)` finds the marker ending at `end`).
MARKER_AT_END = re.compile(rf"(?:{_MARKER})\Z")
#: A role token that stops a turn with no end marker of its own (GLM-4's `<|user|>`, `<|observation|>`).
ROLE_STOP = re.compile(r"<\|[a-z_]{2,20}\|>")
#: The characters a marker opens and closes with.
OPENERS, CLOSERS = "<[", ">]"


def last_marker(text: str) -> str:
    """The last marker in `text`, or `text` itself when it holds none.

    Example:
        >>> last_marker("<|im_end|>\\n</s>"), last_marker("\\n\\n")
        ('</s>', '\\n\\n')
    """
    markers = MARKER.findall(text)
    return markers[-1] if markers else text
