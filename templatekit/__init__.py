"""templatekit: make any chat template trainable with assistant-only loss, verified."""

from .dataset import DatasetRowError, prepare_dataset
from .errors import PatchError, TemplateKitError, TemplateSourceError
from .library import get_template, list_templates
from .patcher import check_template, patch_template, patch_tokenizer
from .report import PatchResult, Report
from .spans import SpanRenderer, render_with_spans

__all__ = [
    "DatasetRowError",
    "PatchError",
    "PatchResult",
    "Report",
    "SpanRenderer",
    "TemplateKitError",
    "TemplateSourceError",
    "check_template",
    "get_template",
    "list_templates",
    "patch_template",
    "patch_tokenizer",
    "prepare_dataset",
    "render_with_spans",
]
__version__ = "0.1.0"
