"""templatekit: make any chat template trainable with assistant-only loss, verified.

The public API is loaded on first use (PEP 562): `import templatekit` and `templatekit --help` load neither
transformers nor torch, datasets or trl; `templatekit.patch_template` loads what patching needs.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .errors import DatasetRowError, PatchError, StripError, TemplateKitError, TemplateSourceError


class _NoTorchNotice(logging.Filter):
    """Drops transformers' "PyTorch was not found" notice, which its import logs when torch is not installed.
    templatekit renders and tokenizes without torch, so on a plain install the notice would open every command's
    output (the pre-commit hook's too) with a warning about nothing the user did; every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


# On transformers' own logger before anything imports it (the filter stays for the imports made later, lazily).
if not any(isinstance(f, _NoTorchNotice) for f in logging.getLogger("transformers").filters):
    logging.getLogger("transformers").addFilter(_NoTorchNotice())

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports these on first use
    from .core.pipeline import check_template, patch_template
    from .core.report import PatchResult, Report
    from .core.strip import strip_template
    from .integrations.processors import check_processor, patch_processor
    from .integrations.trl import patch_tokenizer
    from .library import get_template, list_templates
    from .training.audit import audit_conversations
    from .training.batch import BatchMasker
    from .training.dataset import prepare_dataset
    from .training.options import Limits
    from .training.policies import Policy
    from .training.spans import SpanRenderer, render_with_spans
    from .training.vision import VisionCollator

# Each lazily loaded name and the module that defines it.
_LAZY = {
    "check_template": "templatekit.core.pipeline",
    "patch_template": "templatekit.core.pipeline",
    "PatchResult": "templatekit.core.report",
    "Report": "templatekit.core.report",
    "strip_template": "templatekit.core.strip",
    "patch_tokenizer": "templatekit.integrations.trl",
    "check_processor": "templatekit.integrations.processors",
    "patch_processor": "templatekit.integrations.processors",
    "get_template": "templatekit.library",
    "list_templates": "templatekit.library",
    "audit_conversations": "templatekit.training.audit",
    "BatchMasker": "templatekit.training.batch",
    "prepare_dataset": "templatekit.training.dataset",
    "Limits": "templatekit.training.options",
    "Policy": "templatekit.training.policies",
    "SpanRenderer": "templatekit.training.spans",
    "render_with_spans": "templatekit.training.spans",
    "VisionCollator": "templatekit.training.vision",
}

__all__ = [
    "BatchMasker",
    "DatasetRowError",
    "Limits",
    "PatchError",
    "PatchResult",
    "Policy",
    "Report",
    "SpanRenderer",
    "StripError",
    "TemplateKitError",
    "TemplateSourceError",
    "VisionCollator",
    "audit_conversations",
    "check_processor",
    "check_template",
    "get_template",
    "list_templates",
    "patch_processor",
    "patch_template",
    "patch_tokenizer",
    "prepare_dataset",
    "render_with_spans",
    "strip_template",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here, so later lookups are plain."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
