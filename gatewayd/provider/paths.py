"""The provider's API paths: the default table, which are inferred, and checking an administrator's overrides (docs/provider.md, Checking a new account).

The client (``client.py``) and the simulator build their URLs and routes from
one merged table, ``merged_paths(overrides)``; ``[provider.paths]`` in the
configuration is checked here at load, so a path that could never work is a
``check-config`` error instead of a daemon that only logs 404s.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

__all__ = ["INFERRED_PATHS", "PATHS", "PathProblem", "check_path", "merged_paths", "placeholders"]

# Relative to base_url (".../api/ver1.0"). A wrong path is corrected with
# [provider.paths] in the configuration, never by editing this table.
PATHS: dict[str, str] = {
    "user": "/user",
    "extensions": "/client/{client_id}/extension/",
    "extension": "/client/{client_id}/extension/{extension_id}",
    "fax_mailto": "/extension/{extension_id}/fax/",  # inferred
    "fax_out": "/extension/{extension_id}/fax/out/",
    "fax_out_one": "/extension/{extension_id}/fax/out/{fax_id}",
    "fax_in": "/extension/{extension_id}/fax/in/",  # inferred
    "fax_in_one": "/extension/{extension_id}/fax/in/{uuid}",  # inferred (GET the file; DELETE: inbound.delete_after_relay)
}
#: Keys of PATHS that are inferred from sibling resources, not documented.
INFERRED_PATHS: frozenset[str] = frozenset({"fax_mailto", "fax_in", "fax_in_one"})

# What a path may contain besides its placeholders: the unreserved and
# sub-delimiter characters of a URL path (RFC 3986), no query or fragment.
_PATH_TEXT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$")


class PathProblem(ValueError):
    """An override that cannot work; the message says why."""


def placeholders(template: str) -> set[str]:
    """The ``{name}`` fields of a template (PathProblem if it is not a plain one)."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PathProblem(f"unbalanced braces ({exc})") from None
    for text, field, spec, conversion in parsed:
        if not _PATH_TEXT.match(text):
            raise PathProblem("only path characters are allowed (no spaces, '?', '#' or quotes)")
        if field is None:
            continue
        if spec or conversion or not field.isidentifier():
            written = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise PathProblem(f"{{{written}}}: placeholders are plain names like {{extension_id}}")
        names.add(field)
    return names


def check_path(key: str, template: str) -> str:
    """``template`` if it can replace ``PATHS[key]``; PathProblem otherwise."""
    if key not in PATHS:
        raise PathProblem(f"unknown path; the keys are {', '.join(sorted(PATHS))}")
    if not template.startswith("/") or template.startswith("//"):
        raise PathProblem("must start with one '/' (it is relative to provider.base_url)")
    if any(seg in (".", "..") for seg in template.split("/")):
        raise PathProblem("'.' and '..' segments are not allowed")
    need = placeholders(PATHS[key])
    have = placeholders(template)
    if have != need:
        wanted = ", ".join(f"{{{n}}}" for n in sorted(need)) or "no placeholders"
        missing = sorted(need - have)
        extra = sorted(have - need)
        why = []
        if missing:
            why.append("missing " + ", ".join(f"{{{n}}}" for n in missing))
        if extra:
            why.append("unknown " + ", ".join(f"{{{n}}}" for n in extra))
        raise PathProblem(f"needs {wanted} ({'; '.join(why)})")
    return template


def merged_paths(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The default table with ``overrides`` applied (each checked)."""
    table = dict(PATHS)
    for key, template in (overrides or {}).items():
        table[key] = check_path(key, template)
    seen: dict[str, str] = {}
    for key, template in table.items():
        shape = re.sub(r"\{[^}]*\}", "{}", template)
        if shape in seen:
            raise PathProblem(f"{key} and {seen[shape]} would be the same path {template}")
        seen[shape] = key
    return table
