"""The inbound Check contract: what every check of the milter's inbound path declares.

One module per check (mailward/checks/NAME.py), like authentication_milter's handlers and
like the policy service's `mailward.policies.base.Policy`.  A module provides a
`CheckSpec`: the check's name, its configuration section and reader (next to the check,
not in config.py), and a builder that makes the `Check` from settings.  The registry
(mailward/checks/registry.py) lists the specs; the pipeline orders the built checks once,
from what each requires, and then runs them in that order for every message.

Why typed results and keys rather than a shared dict: a later check reads an earlier
one's *result* (DMARC reads the SPF and DKIM outcomes), never its private state or its
A-R text, and mypy checks that it reads the type the other check produces.  A check
that raises is a bug, not a verdict about the sender: the pipeline logs it with its
traceback, counts it, and reports the check's A-R methods as `temperror`.

Results are data, scores are policy (as in Rspamd): a check emits `Symbol`s (defined with
the Verdict in mailward/model.py, re-exported here) that say what it found (`SPF_FAIL`,
`DKIM_VALID(example.org)`); weights and actions live elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from mailward.model import AuthResult, Connection, HeaderEdit, Symbol, Transaction

if TYPE_CHECKING:
    from mailward.config import Settings
    from mailward.configreader import Table
    from mailward.dns import Resolver

__all__ = [
    "BuildContext", "Check", "CheckInput", "CheckSpec", "ResultKey", "Results", "Symbol",
]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")

class ResultKey(Generic[R_co]):
    """Names the typed result one check produces; `Results.get(key)` returns an R.

    Keys are compared by name, so the key is what `requires` lists and what the pipeline
    orders by.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ResultKey({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultKey) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Results:
    """The typed results of the checks that ran so far for one message (read-only).

    A check that was disabled, did not apply or raised has no entry: `get` returns None
    and the consumer decides what "could not tell" means for it.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, object] | None = None) -> None:
        self._values: dict[str, object] = dict(values or {})

    def get(self, key: ResultKey[R]) -> R | None:
        value = self._values.get(key.name)
        return value  # type: ignore[return-value]

    def __contains__(self, key: ResultKey[Any]) -> bool:
        return key.name in self._values

    def with_result(self, key: ResultKey[R], value: R) -> Results:
        """A copy with one more result (the pipeline's only way to add one)."""
        values = dict(self._values)
        values[key.name] = value
        return Results(values)


@dataclass(frozen=True)
class CheckInput:
    """What a check sees: the connection, the message, and earlier checks' results."""

    connection: Connection
    transaction: Transaction
    results: Results = field(default_factory=Results)


class Check(ABC, Generic[R]):
    """One inbound check, built once per configuration and run for every message.

    Subclasses set the class attributes and implement `evaluate`; the other methods turn
    the typed result into what the pipeline collects.  Instances must be safe to use from
    several threads at once (they hold configuration and caches, never per-message state).
    """

    #: The check's name: log lines, metric label `check`, the registry.  lower_snake.
    name: ClassVar[str]
    #: The result this check produces.
    produces: ClassVar[ResultKey[Any]]
    #: Results that must exist in the pipeline (a configuration error if not): their
    #: checks run first.  A result may still be absent for one message (the check did
    #: not apply or raised); `evaluate` must handle None.
    requires: ClassVar[tuple[ResultKey[Any], ...]] = ()
    #: Results used when their check is configured: ordering only, never an error.
    uses: ClassVar[tuple[ResultKey[Any], ...]] = ()
    #: The Authentication-Results methods this check reports; a check that raises is
    #: reported as `temperror` for each of them.  Empty for checks outside A-R.
    auth_methods: ClassVar[tuple[str, ...]] = ()

    def applies(self, check_input: CheckInput) -> bool:
        """False to skip the check for this message (no client IP for SPF, say)."""
        return True

    @abstractmethod
    def evaluate(self, check_input: CheckInput) -> R:
        """The check's typed result for one message."""

    def auth_results(self, result: R, connection: Connection) -> Sequence[AuthResult]:
        """The A-R entries this result contributes, in the order they are written."""
        return ()

    def symbols(self, result: R) -> Sequence[Symbol]:
        """What the result means, as named symbols."""
        return ()

    def header_edits(self, result: R, authserv_id: str) -> Sequence[HeaderEdit]:
        """Headers of this check's own (Received-SPF), added after Authentication-Results."""
        return ()

    @abstractmethod
    def metric_result(self, result: R) -> str:
        """The bounded label `result` of mailward_check_results_total for this result."""


@dataclass
class BuildContext(Generic[S]):
    """What a check's builder gets: the whole settings, its own section, and shared parts.

    `shared` lets two checks use one object (DKIM and ARC share the parsed-key cache):
    `context.shared_object("dkim_keys", lambda: KeyFetcher(resolver))` makes it once per
    pipeline.
    """

    settings: Settings
    section: S
    resolver: Resolver
    _shared: dict[str, object] = field(default_factory=dict)

    def shared_object(self, name: str, make: Callable[[], R]) -> R:
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]  # type: ignore[return-value]


@dataclass(frozen=True)
class CheckSpec(Generic[S]):
    """How the registry knows one check module.

    `section` is the TOML table the check reads with `read_settings` (None for the
    authentication checks, whose sections config.py still reads because the policy
    service and the signer share them; `read_settings` then must be None too).  `build`
    returns None when the configuration switches the check off.
    """

    name: str
    build: Callable[[BuildContext[S]], Check[Any] | None]
    section: str | None = None
    read_settings: Callable[[Table], S] | None = None

    def __post_init__(self) -> None:
        if (self.section is None) != (self.read_settings is None):
            raise ValueError(f"check {self.name}: section and read_settings go together")
