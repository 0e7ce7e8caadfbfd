"""What verification found, and what a patch produced: plain data handed to the CLI and callers."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass
class Report:
    """The verdict on one template.

    `ok` is True only when the template carries generation tags and every probe passed.
    `reasons` holds one readable line per failure; `notes` holds facts worth knowing that are not failures.
    `history_mismatch` is the note (also in `notes`) saying where the template renders a past turn unlike the
    turn as generated (it drops earlier reasoning, say): train such a template with `prepare_dataset(per_turn=True)`.
    `switch_problems` names the settings of the template's own switches (``enable_thinking=False``) under which
    the tags would train the wrong text, with the first reasons (also in `notes`).

    Example:
        >>> report = Report(ok=False, reasons=["probe 'single_turn': rendering differs at char 12"])
        >>> report.ok, len(report.reasons)
        (False, 1)
    """

    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes_passed: int = 0
    probes_skipped: int = 0
    tagged: bool = False
    history_mismatch: str | None = None
    # Template switches set one way (``"enable_thinking=False"``) under which the tags train the wrong text: the
    # first reasons. The verdict `ok` is for the settings verified; patch with the switch set for such data.
    switch_problems: dict[str, list[str]] = field(default_factory=dict)
    # The settings of the template's switches the verdict holds for (``["default", "enable_thinking=False"]``).
    settings: list[str] = field(default_factory=list)
    # Whitespace trained right after a stop marker (accepted unless strict): imprecise, not wrong.
    imprecise: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the verdict and the probe counts."""
        verdict = "ok" if self.ok else "FAILED"
        settings = f" under {len(self.settings)} settings" if len(self.settings) > 1 else ""
        return (
            f"{verdict}: {self.probes_passed} probes passed{settings}, {self.probes_skipped} skipped, "
            f"{len(self.reasons)} problems"
        )


@dataclass
class PatchResult:
    """A verified patched template.

    `status` is "patched" (tags inserted), "already_tagged" (the input's own tags verified) or
    "retagged" (wrong tags stripped and the template patched again).

    Example:
        >>> result = PatchResult(template="a{% generation %}b{% endgeneration %}", original="ab", report=Report(ok=True))
        >>> "+a{% generation %}b{% endgeneration %}" in result.diff
        True
    """

    template: str
    original: str
    report: Report
    status: str = "patched"

    @property
    def diff(self) -> str:
        """A unified diff from the original to the patched template."""
        lines = difflib.unified_diff(
            self.original.splitlines(keepends=True),
            self.template.splitlines(keepends=True),
            fromfile="original",
            tofile="patched",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
