"""templatekit: make any chat template trainable with assistant-only loss, verified."""

from .errors import PatchError, TemplateKitError, TemplateSourceError
from .patcher import check_template, patch_template, patch_tokenizer
from .report import PatchResult, Report

__all__ = [
    "PatchError",
    "PatchResult",
    "Report",
    "TemplateKitError",
    "TemplateSourceError",
    "check_template",
    "patch_template",
    "patch_tokenizer",
]
__version__ = "0.1.0"
