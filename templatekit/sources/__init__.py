"""Sources: chat templates in and out of files, folders, the Hugging Face Hub and GGUF files.

Every source goes through `load_templates`, which decides the source's kind (`source_kind`) and hands it to the
loader registered for that kind (`loading.LOADERS`). Every failure is a `TemplateSourceError` that names the
file, and the line and column where that means something. This package depends on nothing in templatekit but
`errors`: reading and writing files knows nothing of templates' meaning.

Modules: `reading` (bounded reads, `LoadedTemplate`), `local` (files, model folders), `hub`, `gguf`, `loading`
(the kinds and the dispatch), `atomic` (all-or-nothing writes), `in_place` (`--in-place` updates with backups)
and `json_positions` (places inside JSON text).
"""

from __future__ import annotations

from ..errors import NoChatTemplateError
from .atomic import TEMPORARY_SUFFIX, atomic_output, write_bytes_atomic, write_text_atomic
from .loading import LOADERS, load_templates, register_loader, source_kind
from .local import CONFIG_NAMES, find_template_files
from .reading import MAX_CONFIG_BYTES, MAX_TEMPLATE_BYTES, LoadedTemplate, read_file_bytes, read_json_file

__all__ = [
    "CONFIG_NAMES",
    "TEMPORARY_SUFFIX",
    "LOADERS",
    "MAX_CONFIG_BYTES",
    "MAX_TEMPLATE_BYTES",
    "LoadedTemplate",
    "NoChatTemplateError",
    "atomic_output",
    "find_template_files",
    "load_templates",
    "read_file_bytes",
    "read_json_file",
    "register_loader",
    "source_kind",
    "write_bytes_atomic",
    "write_text_atomic",
]
