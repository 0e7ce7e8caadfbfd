"""The command line run in-process, as the CLI tests share it."""

from __future__ import annotations

import pytest

from templatekit import cli


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """`templatekit ARGV...` through `templatekit.cli.main`: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
