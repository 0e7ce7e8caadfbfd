"""The training example runs as a user would run it: `python examples/train_sft_assistant_only.py --tiny`
(CPU, a tiny model from a config, the real Qwen2.5 tokenizer built offline) finishes its steps and logs a loss."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_sft_assistant_only.py"


def test_example_tiny_run_finishes_and_logs_a_loss(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--tiny", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # the example must not depend on the working directory
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "16 conversations" in out and "device: cpu (fp32); 3 steps" in out
    finished = re.search(r"finished (\d+) steps in [\d.]+ s; training loss ([\d.]+)", out)
    assert finished, out[-2000:]
    assert int(finished.group(1)) == 3
    assert math.isfinite(float(finished.group(2))) and float(finished.group(2)) > 0
    logged = re.search(r"first logged loss ([\d.]+), last logged loss ([\d.]+)", out)
    assert logged and all(math.isfinite(float(value)) for value in logged.groups())
    # the patched template was used by TRL as is: no untrained end-of-turn warning
    assert "end-of-turn" not in result.stderr
