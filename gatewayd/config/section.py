"""Reading one TOML table key by key (``_Section``), and the problem list every reader reports to (``_Reader``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatewayd.config.secrets import find_file, read_secret
from gatewayd.config.values import _Bad, _kind_name, _show


class _Reader:
    """The problems of one load, each ``key.path: reason``, and where its files are found."""

    def __init__(self, env: dict[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(f"{path}: {reason}")

    def has_problem(self, path: str) -> bool:
        return any(p.startswith(f"{path}:") for p in self.problems)

    def find_file(self, path: str, name: str) -> str | None:
        return find_file(self.env, self.base_dir, self.problem, path, name)

    def read_secret(self, path: str, name: str) -> str:
        return read_secret(self.env, self.base_dir, self.problem, path, name)


class _Section:
    """Reads one TOML table, recording problems and the keys it consumed."""

    def __init__(self, loader: _Reader, path: str, table: Any) -> None:
        self.loader = loader
        self.path = path
        if table is None:
            table = {}
        if not isinstance(table, dict):
            loader.problem(path, f"expected a table, got {_show(table)}")
            table = {}
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any, parse: Callable[[Any], Any] | None = None, *, kind: type | tuple[type, ...] | None = None) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        try:
            if kind is not None:
                ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)))
                if not ok:
                    raise _Bad(f"expected {_kind_name(kind)}, got {_show(value)}")
            return parse(value) if parse else value
        except _Bad as exc:
            self.loader.problem(self.key(name), str(exc))
            return default

    def get_list(self, name: str, default: tuple, parse: Callable[[Any], Any]) -> tuple:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        if not isinstance(value, list):
            self.loader.problem(self.key(name), f"expected a list, got {_show(value)}")
            return default
        out = []
        for i, item in enumerate(value):
            try:
                out.append(parse(item))
            except _Bad as exc:
                self.loader.problem(f"{self.key(name)}[{i}]", str(exc))
        return tuple(out)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def check(v: Any) -> str:
            if v not in choices:
                raise _Bad(f"expected one of {', '.join(_show(c) for c in choices)}, got {_show(v)}")
            return v
        return self.get(name, default, check)

    def secret(self, name: str, default: str = "") -> str:
        """``name`` or its ``name_file`` twin, never both."""
        inline = self.get(name, None, kind=str)
        file_name = self.get(f"{name}_file", None, kind=str)
        if inline is not None and file_name is not None:
            self.loader.problem(self.key(name), f"set either {name} or {name}_file, not both")
            return default
        if file_name is not None:
            return self.loader.read_secret(self.key(f"{name}_file"), file_name)
        return inline if inline is not None else default

    def file(self, name: str) -> str:
        """A file name (certificate, key, CA bundle); "" when unset.

        Relative names are looked up in $CREDENTIALS_DIRECTORY first (systemd
        LoadCredential=), then next to the configuration file. The result is
        the absolute path found.
        """
        value = self.get(name, "", kind=str)
        if not value:
            return ""
        return self.loader.find_file(self.key(name), value) or ""

    def finish(self) -> None:
        for name in self.table:
            if name not in self.used:
                self.loader.problem(self.key(name), "unknown key")
