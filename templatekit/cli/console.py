"""The console: where every command writes. Rich text and tables on a terminal, plain lines in a pipe.

rich is imported only when a stream is a terminal, so `--help` and piped runs never pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "STATUS_STYLE", "Console", "Replay"]

#: Exit codes: success; a template cannot be patched or fails its check; bad usage or unreadable input.
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: The colour of each status a command prints (patch results, report rows, check verdicts).
STATUS_STYLE = {
    "patched": "green",
    "retagged": "green",
    "already_tagged": "cyan",
    "already tagged": "cyan",
    "not patchable": "yellow",
    "ok": "green",
    "FAILED": "bold red",
}


class Console:
    """One output stream: rich text and tables on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.rich = None  # a rich.console.Console on a terminal
        if self.tty:
            from rich.console import Console as RichConsole

            self.rich = RichConsole(file=stream, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.rich is not None:
            from rich.text import Text

            self.rich.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")

    def raw(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def diff(self, text: str) -> None:
        if self.rich is None:
            self.raw(text)
            return
        for line in text.splitlines():
            if line.startswith(("+++", "---")):
                style = "bold"
            elif line.startswith("+"):
                style = "green"
            elif line.startswith("-"):
                style = "red"
            elif line.startswith("@@"):
                style = "cyan"
            else:
                style = None
            self.line(line, style)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], status_column: int) -> None:
        if self.rich is not None:
            from rich.table import Table

            table = Table(*headers, show_lines=False)
            for row in rows:
                cells = list(row)
                style = STATUS_STYLE.get(cells[status_column])
                cells[status_column] = f"[{style}]{cells[status_column]}[/]" if style else cells[status_column]
                table.add_row(*cells)
            self.rich.print(table)
            return
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        for row in [list(headers), *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
            self.stream.write("  ".join(cells).rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Replay:
    """What a command would print on its consoles, kept in order and printed later: a command that writes files
    says what it found only once they are written, so that a write that fails is the one line of its error.

    Example:
        >>> import io
        >>> replay, stream = Replay(), io.StringIO()
        >>> later = replay.console(Console(stream))
        >>> later.line("t.jinja: patched"); later.line("error: out.jinja: cannot write: disk full")
        >>> replay.play(errors_only=True); stream.getvalue()
        'error: out.jinja: cannot write: disk full\\n'
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Console, str, tuple]] = []

    def console(self, real: Console) -> Console:
        """A stand-in for `real` whose output waits for `play`."""
        return _Recording(self, real)  # type: ignore[return-value]

    def play(self, *, errors_only: bool = False) -> None:
        """Print what was kept, in order (only the `error:` lines with `errors_only`)."""
        for real, method, args in self.calls:
            if not errors_only or (method == "line" and str(args[0]).startswith("error:")):
                getattr(real, method)(*args)
        self.calls.clear()


class _Recording:
    """A `Console` whose writes go to a `Replay`."""

    def __init__(self, replay: Replay, real: Console) -> None:
        self.replay, self.real = replay, real
        self.stream, self.tty, self.rich = real.stream, real.tty, real.rich

    def line(self, text: str = "", style: str | None = None) -> None:
        self.replay.calls.append((self.real, "line", (text, style)))

    def raw(self, text: str) -> None:
        self.replay.calls.append((self.real, "raw", (text,)))

    def diff(self, text: str) -> None:
        self.replay.calls.append((self.real, "diff", (text,)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], status_column: int) -> None:
        self.replay.calls.append((self.real, "table", (headers, rows, status_column)))

    def flush(self) -> None:
        pass
