"""Just enough TOML writing for Mailward configuration files (tomllib only reads).

Handles what mailward.toml contains: tables, nested tables, arrays of tables
(`[[dkim.sign.keys]]`), strings, integers, floats, booleans and arrays of those.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in: tables merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes (ensure_ascii=False
        # avoids \ud83d-style surrogate pairs, which TOML forbids).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item, where) for item in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v, where)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"{where}: cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(
        isinstance(item, Mapping) for item in value
    )


def dumps(data: Mapping[str, Any]) -> str:
    """Serialize a mapping as TOML text that `tomllib.loads` reads back unchanged."""
    out: list[str] = []
    _table(data, [], out)
    return "\n".join(out).strip() + "\n"


def _table(data: Mapping[str, Any], path: list[str], out: list[str]) -> None:
    for key, value in data.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            out.append(f"{_key(key)} = {_value(value, '.'.join([*path, key]))}")
    for key, value in data.items():
        sub = [*path, key]
        header = ".".join(_key(part) for part in sub)
        if isinstance(value, Mapping):
            out += ["", f"[{header}]"]
            _table(value, sub, out)
        elif _is_table_array(value):
            for item in value:
                out += ["", f"[[{header}]]"]
                _table(item, sub, out)
