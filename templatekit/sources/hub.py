"""Load chat templates from a Hugging Face Hub model id, fetching only the small files that hold them.

`load_hub_templates("org/model", revision=...)` asks `huggingface_hub.snapshot_download` for the template files
alone (`tokenizer_config.json`, `chat_template.jinja`, `chat_template.json`, `additional_chat_templates/*.jinja`;
never weights) into the shared Hugging Face cache, then reads the downloaded snapshot the way a local model folder
is read. The usual Hugging Face settings apply: the token from `HF_TOKEN` or `hf auth login`, `HF_ENDPOINT`,
`HF_HOME` / `HF_HUB_CACHE` and `HF_HUB_OFFLINE`.

`huggingface_hub` reads those environment variables once, when it is imported. A long-lived process (a notebook,
a test run) may change them later, so `hub_settings()` reads them again at every call and the endpoint, cache
folder and offline flag are passed to `huggingface_hub` explicitly.

Every failure becomes a `TemplateSourceError` naming the repo and revision and saying what to do: log in for a
private or gated repo, check the id or revision for a 404, go online once for a repo not in the cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import NoChatTemplateError, TemplateSourceError
from .local import load_model_folder
from .reading import LoadedTemplate

__all__ = ["TEMPLATE_FILES", "HubSettings", "hub_settings", "load_hub_templates"]

#: The only files fetched from a repo: every place transformers looks for a chat template.
TEMPLATE_FILES = (
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
)

_TRUE = {"1", "on", "yes", "true"}
_LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"


@dataclass(frozen=True)
class HubSettings:
    """Where and how the Hub is reached: the environment as it is now, not as it was at import time.

    Example:
        hub_settings().endpoint
        # 'https://huggingface.co'
    """

    endpoint: str
    cache_dir: str
    offline: bool


def hub_settings() -> HubSettings:
    """The Hub endpoint, cache folder and offline flag from the current environment (`HF_ENDPOINT`,
    `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`), falling back to what `huggingface_hub` read at import.

    Example:
        settings = hub_settings()
        settings.offline, settings.cache_dir  # with HF_HUB_OFFLINE=1 HF_HOME=/data/hf
        # (True, '/data/hf/hub')
    """
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or constants.ENDPOINT
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache and os.environ.get("HF_HOME"):
        cache = os.path.join(os.environ["HF_HOME"], "hub")
    cache_dir = os.path.expandvars(os.path.expanduser(cache)) if cache else constants.HF_HUB_CACHE
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    offline = flag.strip().lower() in _TRUE if flag is not None else constants.is_offline_mode()
    return HubSettings(endpoint=endpoint, cache_dir=cache_dir, offline=offline)


def load_hub_templates(repo_id: str, revision: str | None = None) -> list[LoadedTemplate]:
    """Every chat template of a Hub model repo, at `revision` (a branch, tag or commit; default: main).

    The template files are downloaded into the Hugging Face cache (or taken from it: a file already cached for
    that commit is not fetched again; with `HF_HUB_OFFLINE=1` nothing is fetched at all) and read like a model
    folder: `chat_template.jinja` and `additional_chat_templates/*.jinja` first, then the `chat_template` field of
    `tokenizer_config.json`, then a processor's `chat_template.json`. Each template's `display` names it as
    `repo@revision/file`.

    Raises `TemplateSourceError` for a repo or revision that does not exist, a private or gated repo without
    access, an unreachable Hub or offline mode with nothing cached; `NoChatTemplateError` for a repo without a
    chat template.

    Example:
        [t.name for t in load_hub_templates("Qwen/Qwen2.5-7B-Instruct")]
        # ['default']
    """
    settings = hub_settings()
    where = f"{repo_id}@{revision}" if revision else repo_id
    folder = Path(_download(repo_id, revision, settings, where))
    try:
        if not folder.is_dir():  # none of the template files exists in the repo, so nothing was downloaded
            raise NoChatTemplateError("no template files", source=str(folder))
        templates = load_model_folder(folder)
    except NoChatTemplateError:
        found = ", ".join(name for name in TEMPLATE_FILES if "*" not in name and (folder / name).is_file())
        raise NoChatTemplateError(
            "the repo has no chat template "
            + (
                f"(its {found} holds none)"
                if found
                else "(no tokenizer_config.json, chat_template.jinja or chat_template.json)"
            ),
            source=where,
        ) from None
    except TemplateSourceError as exc:  # a broken file in the repo: name it by repo and path, not by cache path
        raise TemplateSourceError(
            exc.message, source=_renamed(exc.source, folder, where), line=exc.line, column=exc.column
        ) from None
    return [replace(t, display=_renamed(str(t.origin), folder, where)) for t in templates]


def _renamed(path: str | None, folder: Path, where: str) -> str:
    """`<cache>/snapshots/<sha>/tokenizer_config.json` → `org/model@rev/tokenizer_config.json`."""
    if path is None:
        return where
    try:
        return f"{where}/{Path(path).relative_to(folder).as_posix()}"
    except ValueError:
        return path


def _download(repo_id: str, revision: str | None, settings: HubSettings, where: str) -> str:
    """The snapshot folder holding the repo's template files (fetched if needed); errors made readable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # A repo without any template file makes snapshot_download log "No files matched"; we say it better below.
    logger = logging.getLogger("huggingface_hub._snapshot_download")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(TEMPLATE_FILES),
            cache_dir=settings.cache_dir,
            endpoint=settings.endpoint,
            local_files_only=settings.offline,
            tqdm_class=_silent_tqdm(),
        )
    except RevisionNotFoundError:
        raise TemplateSourceError(
            f"no revision {revision!r} in this repo (check the branch, tag or commit)", source=where
        ) from None
    except GatedRepoError as exc:
        status = exc.response.status_code if exc.response is not None else None
        what = "you have not been granted access yet" if status == 403 else "it needs a token"
        raise TemplateSourceError(
            f"gated repo, {what}: accept its conditions on {settings.endpoint}/{repo_id} and {_LOGIN_HINT}",
            source=where,
        ) from None
    except RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise TemplateSourceError(
                f"not authorised (HTTP 401): the repo is private or gated, or does not exist; {_LOGIN_HINT}",
                source=where,
            ) from None
        raise TemplateSourceError(
            f"no such repo on {settings.endpoint} (HTTP 404; check the id, or {_LOGIN_HINT} if it is private)",
            source=where,
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if settings.offline:
            raise TemplateSourceError(
                "offline (HF_HUB_OFFLINE is set) and this repo/revision is not in the Hugging Face cache "
                f"{settings.cache_dir}: run once online, or unset HF_HUB_OFFLINE",
                source=where,
            ) from None
        cause = exc.__cause__ or exc
        raise TemplateSourceError(
            f"cannot reach {settings.endpoint} and nothing cached: {type(cause).__name__}: {_first_line(cause)}",
            source=where,
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            raise TemplateSourceError(f"not authorised (HTTP 401): {_LOGIN_HINT}", source=where) from None
        if status == 403:
            raise TemplateSourceError(
                f"forbidden (HTTP 403): your token has no access to this repo; {_LOGIN_HINT} with a token that has",
                source=where,
            ) from None
        raise TemplateSourceError(f"the Hub answered HTTP {status}: {_first_line(exc)}", source=where) from None
    except OSError as exc:  # connection refused, DNS, a cache folder that cannot be written
        raise TemplateSourceError(f"cannot fetch: {type(exc).__name__}: {_first_line(exc)}", source=where) from None
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _silent_tqdm():
    """A progress bar class that shows nothing: a handful of small files needs no bar, and stderr stays readable."""
    from huggingface_hub.utils import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent
