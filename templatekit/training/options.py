"""What a training entry point is told, as two value objects: the loss `Policy` and the `Limits`.

`SpanRenderer`, `render_with_spans`, `prepare_dataset` and `audit_conversations` each take ``policy=`` and
``limits=``. The keywords callers already write (``train_on_eot="last"``, ``max_length=2048``, ``timeout=5``)
become those objects in one place, `resolve`, which reads the objects' own fields: an option added to `Policy`
(or to a subclass of it) or to `Limits` is a keyword of every entry point, and reaches each of them, without a
signature to change.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..core.sandbox import DEFAULT, DEFAULT_LIMITS, active_limits
from ..core.sandbox import Limits as SandboxLimits
from ..errors import ArgumentTypeError, InvalidArgumentError
from .policies import Policy
from .truncation import TRUNCATION_MODES

__all__ = ["Limits", "Policy", "resolve"]


@dataclass(frozen=True)
class Limits:
    """How long a tokenized row may be, and how much time and memory one template may take.

    Attributes:
        max_length: the most tokens a row may have (None: no limit). Read where rows are tokenized
            (`prepare_dataset` cuts them, `audit_conversations` counts the rows a cut would change); a renderer
            of text has no tokens to count.
        truncation: what happens to a longer row: ``"right"`` keeps its first tokens, ``"left"`` its last ones,
            ``"drop"`` drops it (`templatekit.training.truncation`).
        max_steps, max_memory, timeout: the sandbox's limits (`templatekit.core.sandbox`) for patching and
            verifying the template and then for each conversation rendered: steps of work, bytes or ``"512M"``,
            and seconds of wall clock (a backstop). ``DEFAULT`` is the limit in force (50,000,000 steps, 1 GiB and
            60 s unless a `limit_scope` says otherwise); None is no limit.

    Example:
        >>> Limits(max_length=2048, truncation="left").truncation
        'left'
        >>> Limits(truncation="middle")
        Traceback (most recent call last):
        ...
        templatekit.errors.InvalidArgumentError: truncation must be one of 'right', 'left', 'drop', got 'middle'
    """

    max_length: int | None = None
    truncation: str = "right"
    timeout: float | None = DEFAULT
    max_memory: int | str | None = DEFAULT
    max_steps: int | None = DEFAULT

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_MODES:
            allowed = ", ".join(repr(mode) for mode in TRUNCATION_MODES)
            raise InvalidArgumentError(f"truncation must be one of {allowed}, got {self.truncation!r}")
        length = self.max_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise InvalidArgumentError(f"max_length must be a positive integer or None, got {length!r}")
        self._applied_to(DEFAULT_LIMITS)  # raises on a bad value

    def sandbox(self) -> SandboxLimits:
        """The sandbox's limits to render under: those in force, with `max_steps`, `timeout` and `max_memory`
        where given."""
        return self._applied_to(active_limits())

    def _applied_to(self, base: SandboxLimits) -> SandboxLimits:
        return base.replace(timeout=self.timeout, max_memory=self.max_memory, max_steps=self.max_steps)

    def concrete(self) -> Limits:
        """These limits with the time and memory in force written out (they travel to worker processes).

        Example:
            >>> limits = Limits(timeout=2).concrete()
            >>> limits.timeout, limits.max_memory == 1 << 30, limits.max_steps
            (2.0, True, 50000000)
        """
        limits = self.sandbox()
        return replace(self, timeout=limits.timeout, max_memory=limits.max_memory, max_steps=limits.max_steps)


def resolve(
    policy: Policy | None, limits: Limits | None, keywords: dict[str, Any], *, caller: str | None = None
) -> tuple[Policy, Limits]:
    """`policy` and `limits` (the defaults when None), with the keywords that name their fields applied.

    Those keywords are taken out of `keywords`. With `caller`, an entry point that takes no other keywords, any
    keyword left raises `TypeError` as Python does for an unknown one; without it, the rest is the caller's
    (`render_with_spans` passes it to the template). The fields are read off the objects given, so a subclass of
    `Policy` with a field of its own takes that field as a keyword too.

    Example:
        >>> rest = {"train_on_eot": "last", "max_length": 512, "bos_token": "<s>"}
        >>> policy, limits = resolve(None, None, rest)
        >>> policy.train_on_eot, limits.max_length, rest
        ('last', 512, {'bos_token': '<s>'})
        >>> resolve(Policy(train_on_eot="none"), None, {"train_role": "judge"}, caller="SpanRenderer")
        Traceback (most recent call last):
        ...
        TypeError: SpanRenderer() got an unexpected keyword argument 'train_role'
    """
    policy = Policy() if policy is None else policy
    limits = Limits() if limits is None else limits
    if not isinstance(policy, Policy):
        raise ArgumentTypeError(f"policy must be a templatekit Policy, got {type(policy).__name__}")
    if not isinstance(limits, Limits):
        raise ArgumentTypeError(f"limits must be a templatekit.training.options.Limits, got {type(limits).__name__}")
    changes = []
    for value in (policy, limits):
        names = [field.name for field in fields(value) if field.init and field.name in keywords]
        changes.append({name: keywords.pop(name) for name in names})
    if caller is not None and keywords:
        raise TypeError(f"{caller}() got an unexpected keyword argument {next(iter(keywords))!r}")
    return (
        replace(policy, **changes[0]) if changes[0] else policy,
        replace(limits, **changes[1]) if changes[1] else limits,
    )
