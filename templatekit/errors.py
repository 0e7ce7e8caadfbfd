"""Every error templatekit raises on purpose, in one hierarchy rooted at `TemplateKitError`.

    TemplateKitError
    ├── TemplateSourceError            a template cannot be read or parsed (file, line, column)
    │   ├── NoChatTemplateError        the source is readable but holds no chat template
    │   └── TemplateLimitError         a render went past a time, memory or recursion limit
    ├── NotTrainableError              a template cannot be made trainable as asked; `.reasons`
    │   ├── PatchError                 no verified generation tags
    │   │   └── ProcessorRouteError    patch_processor: TRL's native route masks this processor's rows wrongly
    │   └── FallbackError              not even the delimiter fallback
    ├── StripError                     generation tags cannot be removed without changing the rendering; `.reasons`
    ├── PlanError                      (internal) a turn's span cannot be tagged in the top-level flow
    ├── MarkerCollision                (internal) the fast tagged render cannot place a generation block
    ├── ConversationError              a conversation cannot be rendered or masked as asked (also ValueError)
    ├── DatasetRowError                one dataset row cannot be prepared (also ValueError)
    │   └── MediaAlignmentError        a row's trained tokens do not survive the processor's image expansion
    ├── UnknownTemplateError           no library template has that name (also LookupError)
    ├── InvalidArgumentError           an argument with a wrong value (also ValueError)
    └── ArgumentTypeError              an argument of a wrong type (also TypeError)

    GenerationTagsWarning (a UserWarning)  a GGUF file was written with generation tags in a template
    HistoryMismatchWarning (a UserWarning) prepare_dataset without per_turn on a template that rewrites history
    TemplateSwitchWarning (a UserWarning)  patch_tokenizer: the tags do not hold for a setting of a template switch

The builtin second bases keep `except ValueError` (and the like) working where callers relied on it.
This module imports nothing from the package: every layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TemplateKitError(Exception):
    """Base class for every error templatekit raises on purpose."""

    def __reduce__(self):  # picklable whatever a subclass's __init__ takes: from a child process, a worker
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(kind: type[TemplateKitError], args: tuple, state: dict[str, Any]) -> TemplateKitError:
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class TemplateSourceError(TemplateKitError):
    """A template could not be read or parsed: names the file, line and column when known.

    Example:
        >>> str(TemplateSourceError("unexpected '}'", source="chat.jinja", line=3, column=7))
        "chat.jinja:3:7: unexpected '}'"
    """

    def __init__(
        self, message: str, *, source: str | None = None, line: int | None = None, column: int | None = None
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        where = ":".join(str(part) for part in (source or "<template>", line, column) if part is not None)
        super().__init__(f"{where}: {message}")


class NoChatTemplateError(TemplateSourceError):
    """A config file or folder was read fine but holds no chat template."""


class TemplateLimitError(TemplateSourceError):
    """A template went past a resource limit (time, memory or recursion) while it was rendered.

    `.limit` names the limit (`"time"`, `"memory"` or `"recursion"`); `.line` and `.column` say where in the
    template it happened, when known. A template that needs more than the limits allow is refused like a
    malformed one (it is a `TemplateSourceError`), so every command reports it as one line.

    Example:
        >>> error = TemplateLimitError("time", "the template ran past 10 s", line=2, column=4)
        >>> str(error), error.limit
        ('<template>:2:4: time limit exceeded: the template ran past 10 s', 'time')
    """

    def __init__(
        self,
        limit: str,
        detail: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.limit = limit
        self.detail = detail
        super().__init__(f"{limit} limit exceeded: {detail}", source=source, line=line, column=column)

    def __reduce__(self):  # picklable across datasets' worker processes
        return (_rebuild_limit_error, (self.limit, self.detail, self.source, self.line, self.column))


def _rebuild_limit_error(limit, detail, source, line, column) -> TemplateLimitError:
    return TemplateLimitError(limit, detail, source=source, line=line, column=column)


class NotTrainableError(TemplateKitError):
    """A template cannot be made trainable as asked; `.reasons` says why, one readable line each."""

    prefix = "cannot train"

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"{self.prefix}: " + "; ".join(self.reasons))


class PatchError(NotTrainableError):
    """No verified patch could be made; `.reasons` says why, and `.report` holds the verifier's report when one ran.

    Example:
        >>> str(PatchError(["no trained turn is rendered"]))
        'cannot patch template: no trained turn is rendered'
    """

    prefix = "cannot patch template"

    def __init__(self, reasons: Sequence[str], *, report: Any = None) -> None:
        self.report = report
        super().__init__(reasons)


class FallbackError(NotTrainableError):
    """Even the delimiter fallback cannot apply to this template; `.reasons` says why.

    Example:
        >>> str(FallbackError(["no trained turn is rendered"]))
        'even the fallback cannot apply: no trained turn is rendered'
    """

    prefix = "even the fallback cannot apply"


class ProcessorRouteError(PatchError):
    """`patch_processor` refuses a vision-language processor for which TRL's native route
    (`SFTConfig(assistant_only_loss=True)` with the patched chat template) would train the wrong tokens; `.reasons`
    says which, and `.report` holds the `check_processor` report. `templatekit.VisionCollator` trains such a
    processor exactly.

    Example:
        >>> str(ProcessorRouteError(["probe 'one image': trains 4 media tokens"]))
        "TRL's native route is not exact for this processor: probe 'one image': trains 4 media tokens"
    """

    prefix = "TRL's native route is not exact for this processor"


class StripError(TemplateKitError):
    """Removing a template's generation tags would change what it renders; `.reasons` says where.

    Example:
        >>> str(StripError(["probe 'single_turn': rendering differs at character 12"]))
        "cannot strip generation tags: probe 'single_turn': rendering differs at character 12"
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("cannot strip generation tags: " + "; ".join(self.reasons))


class PlanError(TemplateKitError):
    """A turn's span cannot be expressed with tags in the top-level flow (caught inside the patcher)."""


class MarkerCollision(TemplateKitError, ValueError):
    """The fast tagged render cannot tell a generation block's place: the conversation holds a mark, or the
    block renders where the template could capture its output (the caller then renders that conversation with
    transformers' renderer)."""


class ConversationError(TemplateKitError, ValueError):
    """A conversation that cannot be rendered or masked as asked; names the message at fault.

    Example:
        >>> str(ConversationError("content must be a string or a list of content blocks, got int", message=2))
        'message 2: content must be a string or a list of content blocks, got int'
    """

    def __init__(self, problem: str, *, message: int | None = None) -> None:
        self.problem = problem
        self.message = message
        super().__init__(problem if message is None else f"message {message}: {problem}")


class DatasetRowError(TemplateKitError, ValueError):
    """One conversation of a dataset cannot be prepared; names its row (and message) and the problem.

    Example:
        >>> str(DatasetRowError("'role' must be a string, got None", row=3, message=1))
        "row 3, message 1: 'role' must be a string, got None"
    """

    def __init__(self, problem: str, *, row: int | None = None, message: int | None = None) -> None:
        self.problem = problem
        self.row = row
        self.message = message
        where = ", ".join(
            f"{name} {value}" for name, value in (("row", row), ("message", message)) if value is not None
        )
        # Rebuilt from the message alone when unpickled from a worker process (row=None): no double prefix.
        super().__init__(f"{where}: {problem}" if where else problem)


class MediaAlignmentError(DatasetRowError):
    """A conversation's trained tokens do not come through the processor's image expansion unchanged (the processor
    rewrote text next to an image, or a token joins trained text and an image), so which tokens to train is not
    known: the row is refused, never guessed.

    Example:
        >>> str(MediaAlignmentError("trained token 3 (' What') is not among the processor's tokens", row=1))
        "row 1: trained token 3 (' What') is not among the processor's tokens"
    """


class UnknownTemplateError(TemplateKitError, LookupError):
    """No library template has the name asked for; the message lists the names there are."""


class InvalidArgumentError(TemplateKitError, ValueError):
    """An argument with a value templatekit cannot use (a negative timeout, an unknown `train_on_eot`, …)."""


class ArgumentTypeError(TemplateKitError, TypeError):
    """An argument of a type templatekit cannot use (a slow tokenizer where a fast one is needed, …)."""


class GenerationTagsWarning(UserWarning):
    """A GGUF file was written with `{% generation %}` tags in a chat template: inference engines that do not know
    the tag (llama.cpp and llama-cpp-python, text-generation-webui, tabbyAPI) fail to load it. A warning, not an
    error: such a file is right for training; `templatekit strip` writes the copy to deploy."""


class HistoryMismatchWarning(UserWarning):
    """`prepare_dataset(per_turn=False)` with a template that renders a past turn unlike the turn as generated (the
    Qwen3 family drops earlier turns' reasoning): every turn but the last would be trained in a form the model does
    not generate. `per_turn=True` trains each turn in its own row, as generated."""


class TemplateSwitchWarning(UserWarning):
    """A tokenizer was patched whose tags do not hold for some setting of the template's own switches (Qwen3 with
    `enable_thinking=False`): rows rendered with that setting (TRL: a `chat_template_kwargs` column) would train
    the wrong text. Patch with `template_kwargs=` set as the data is rendered."""
