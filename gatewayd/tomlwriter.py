"""A small TOML writer for gatewayd's own configuration files (the demo's
config, and the configs the tests and benchmarks generate). The standard
library reads TOML (tomllib) but does not write it.

Enough of TOML for configurations: scalars, lists, tables and arrays of
tables, nested to any depth; keys are quoted when they are not bare.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(data: dict[str, Any], prefix: str = "") -> str:
    """``data`` as TOML: its scalars first, then its tables and arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in data.items():
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        if isinstance(value, dict):
            tables.append(f"\n[{name}]\n" + dumps(value, name))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"\n[[{name}]]\n" + dumps(item, name))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + ("\n" if lines else "") + "".join(tables)
