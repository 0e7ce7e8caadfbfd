"""Load Unsloth's own masking code (`unsloth_zoo/dataset_utils.py`) from the `unsloth-zoo` wheel, without installing it.

The wheel is fetched once with ``pip download unsloth-zoo --no-deps`` into a cache folder, and only the one module
is imported from it (it needs torch, nothing else from Unsloth, for ``train_on_responses_only(..., return_function=True)``).
Installing unsloth-zoo itself would pull in its GPU dependencies.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

CACHE = Path(tempfile.gettempdir()) / "templatekit-unsloth-zoo"
MODULE = "unsloth_zoo/dataset_utils.py"


def _wheel() -> Path:
    wheels = sorted(CACHE.glob("unsloth_zoo-*.whl"))
    if wheels:
        return wheels[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "unsloth-zoo", "--no-deps", "--quiet", "-d", str(CACHE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    wheels = sorted(CACHE.glob("unsloth_zoo-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download unsloth-zoo failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return wheels[-1]


def load_dataset_utils() -> tuple[ModuleType, str]:
    """Unsloth's `dataset_utils` module and the wheel's file name; raises RuntimeError when it cannot be had."""
    wheel = _wheel()
    target = CACHE / wheel.stem / MODULE
    if not target.is_file():
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(MODULE, CACHE / wheel.stem)
    spec = importlib.util.spec_from_file_location("unsloth_zoo_dataset_utils", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, wheel.name
