"""How fast the command line starts: `templatekit --help` and a bare `import templatekit`, each in a fresh process.

    .venv/bin/python benchmarks/cli_startup.py [--runs 10]

Prints the median (and the fastest and slowest) wall time of `--runs` runs of each, measured from outside the
process, interpreter start included: what a pre-commit hook pays before any template is read. Target: `--help`
median under 0.2 s. The modules a plain `import templatekit` loads are checked in tests/test_structure.py.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    console_script = shutil.which("templatekit", path=str(Path(sys.executable).parent))
    commands = {
        "templatekit --help": [console_script, "--help"]
        if console_script
        else [sys.executable, "-m", "templatekit", "--help"],
        "python -c 'import templatekit'": [sys.executable, "-c", "import templatekit"],
        "python -c 'pass' (the interpreter alone)": [sys.executable, "-c", "pass"],
    }
    for label, command in commands.items():
        times = timed(command, args.runs)
        print(
            f"{label}: median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs)"
        )


if __name__ == "__main__":
    main()
