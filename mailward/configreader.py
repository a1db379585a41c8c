"""Reading a TOML configuration: typed, path-aware accessors and collected errors.

config.py describes Mailward's own sections with these; a check module (mailward/checks/)
describes its section next to its code with the same accessors, so an error always says
`rbl.lists[0].zone: 'x' is not a domain name (line 14)` and unknown keys are errors
everywhere.  Nothing here knows any section.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path}: {self.message}{where}" if self.path else f"{self.message}{where}"


class ConfigError(Exception):
    """The configuration is unusable; `problems` lists every reason."""

    def __init__(self, source: str, problems: Iterable[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} configuration error(s):\n{lines}")





class LineLocator:
    """Finds the line a key was written on, for error messages.

    tomllib does not report positions, so this scans the text: it tracks the current
    [table] header and records where each `key =` appears.  Good enough to point an
    admin at the right line; when it cannot tell, the error simply has no line.
    """

    _TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if match := self._TABLE.match(line):
                table = self._normalise(match.group(1))
                self._lines.setdefault(table, number)
            elif match := self._KEY.match(line):
                key = self._normalise(match.group(1))
                self._lines.setdefault(f"{table}.{key}" if table else key, number)

    @staticmethod
    def _normalise(dotted: str) -> str:
        return ".".join(part.strip().strip("\"'") for part in dotted.split("."))

    def line_of(self, path: str) -> int | None:
        return self._lines.get(re.sub(r"\[\d+\]", "", path))


class Problems:
    def __init__(self, locator: LineLocator | None) -> None:
        self.items: list[ConfigProblem] = []
        self._locator = locator

    def add(self, path: str, message: str) -> None:
        line = self._locator.line_of(path) if self._locator else None
        self.items.append(ConfigProblem(path, message, line))


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


class Table:
    """Typed, path-aware access to one TOML table; remembers which keys were read."""

    def __init__(self, data: dict[str, Any], path: str, problems: Problems) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._seen: set[str] = set()

    def _key_path(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _raw(self, key: str) -> Any:
        self._seen.add(key)
        return self._data.get(key)

    def error(self, key: str, message: str) -> None:
        self._problems.add(self._key_path(key), message)

    def scalar(self, key: str, kind: type[T], default: T) -> T:
        value = self._raw(key)
        if value is None:
            return default
        # bool is an int in Python, but `workers = true` is a mistake, not 1.
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not ok:
            self.error(key, f"expected {_TYPE_NAMES[kind]}, got {describe(value)}")
            return default
        return value  # type: ignore[no-any-return]

    def number(
        self, key: str, kind: type[T], default: T, minimum: float, maximum: float
    ) -> T:
        value = self.scalar(key, kind, default)
        if not minimum <= value <= maximum:  # type: ignore[operator]
            self.error(key, f"must be between {minimum:g} and {maximum:g}, got {value}")
            return default
        return value

    def choice(self, key: str, kind: type[T], default: T) -> T:
        value = self.scalar(key, str, str(default))
        try:
            return kind(value)  # type: ignore[call-arg]
        except ValueError:
            allowed = ", ".join(repr(str(member)) for member in kind)  # type: ignore[attr-defined]
            self.error(key, f"must be one of {allowed}, got {value!r}")
            return default

    def parsed(self, key: str, parse: Callable[[str], T], default: T) -> T:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {describe(value)}")
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def string_list(
        self, key: str, default: tuple[str, ...], parse: Callable[[str], T] | None = None
    ) -> tuple[Any, ...]:
        value = self._raw(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.error(key, f"expected a list of strings, got {describe(value)}")
            return default
        if parse is None:
            return tuple(value)
        parsed = []
        for index, item in enumerate(value):
            try:
                parsed.append(parse(item))
            except ValueError as exc:
                self.error(f"{key}[{index}]", str(exc))
        return tuple(parsed)

    def raw_list(self, key: str) -> list[Any]:
        """An array (of tables, typically): [[dkim.sign.keys]]."""
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables, got {describe(value)}")
            return []
        return value

    def item_table(self, key: str, index: int, item: Any) -> Table | None:
        if not isinstance(item, dict):
            self.error(f"{key}[{index}]", f"expected a table, got {describe(item)}")
            return None
        return Table(item, self._key_path(f"{key}[{index}]"), self._problems)

    @property
    def reported(self) -> set[str]:
        """Keys of this table that already have an error (so "required" is not added)."""
        prefix = f"{self._path}." if self._path else ""
        return {
            problem.path[len(prefix):] for problem in self._problems.items
            if problem.path.startswith(prefix)
        }

    def table(self, key: str) -> Table:
        value = self._raw(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            self.error(key, f"expected a table, got {describe(value)}")
            value = {}
        return Table(value, self._key_path(key), self._problems)

    def written_keys(self) -> tuple[str, ...]:
        """The keys as written, for tables whose keys are data (symbol names, codes)."""
        return tuple(self._data)

    def finish(self, subtables: Iterable[str] = ()) -> None:
        """Report every key nobody asked for: in a config file, a typo is an error."""
        allowed = self._seen | set(subtables)
        for key in self._data:
            if key not in allowed:
                what = "section" if isinstance(self._data[key], dict) else "key"
                self.error(key, f"unknown {what}")


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network in CIDR form: {exc}") from None


def hostname(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?", text):
        raise ValueError(f"{text!r} is not a host name")
    return text


def nameserver(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def domain_name(text: str) -> str:
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(
        re.fullmatch(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9])?", label) for label in labels
    ):
        raise ValueError(f"{text!r} is not a domain name")
    return name
