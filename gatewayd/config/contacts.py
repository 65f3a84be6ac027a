"""The contacts: [[contacts]] tables and the rows of contacts_file (docs/smtp.md, Contacts)."""

from __future__ import annotations

import re
from typing import Any

from gatewayd.config.model import Contact
from gatewayd.config.section import _Reader, _Section
from gatewayd.config.values import _show, contact_number

_ALIAS_RE = re.compile(r"(?=[A-Za-z0-9._-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?", re.ASCII)
_MAX_CONTACTS_FILE = 2_000_000  # characters: tens of thousands of contacts


def read_contacts(loader: _Reader, raw: Any, contacts_file: str) -> tuple[Contact, ...]:
    """[[contacts]] tables, then the rows of contacts_file; every alias once.

    Whether the number policy allows each number is checked above this
    layer (``gatewayd.email_to_fax.policy.contact_problems``, run by
    ``check-config``, at start and on reload); RCPT checks it again anyway."""
    found: list[tuple[str, Contact]] = []  # (where, contact)
    if raw is not None and not isinstance(raw, list):
        loader.problem("contacts", "expected [[contacts]] tables")
        raw = []
    for i, table in enumerate(raw or ()):
        s = _Section(loader, f"contacts[{i}]", table)
        alias = s.get("alias", "", kind=str)
        name = s.get("name", "", kind=str)
        number = s.get("number", "", kind=str)
        s.finish()
        contact = _contact(loader, f"contacts[{i}]", alias, name, number)
        if contact is not None:
            found.append((f"contacts[{i}]", contact))
    if contacts_file:
        found += _contacts_csv(loader, contacts_file)
    seen: dict[str, str] = {}
    contacts = []
    for where, contact in found:
        if contact.alias in seen:
            loader.problem(f"{where}.alias", f'duplicate alias "{contact.alias}" (also {seen[contact.alias]})')
            continue
        seen[contact.alias] = where
        contacts.append(contact)
    return tuple(contacts)


def _contact(loader: _Reader, where: str, alias: str, name: str, number: str) -> Contact | None:
    ok = True
    if not _ALIAS_RE.fullmatch(alias):
        loader.problem(f"{where}.alias", f"expected letters, digits, \".\", \"-\" or \"_\" with at least one letter (the local part of <alias>@<fax domain>), got {_show(alias)}")
        ok = False
    if not name.strip() or any(c in name for c in "\r\n\0") or len(name) > 200:
        loader.problem(f"{where}.name", f"expected a name of one line (at most 200 characters), got {_show(name)}")
        ok = False
    compact = contact_number(number)
    if not compact or len(compact) > 64:
        loader.problem(f"{where}.number", f"expected a fax number, got {_show(number)}")
        ok = False
    return Contact(alias.lower(), name.strip(), number.strip(), where) if ok else None


def _contacts_csv(loader: _Reader, path: str) -> list[tuple[str, Contact]]:
    import csv

    out: list[tuple[str, Contact]] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read(_MAX_CONTACTS_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        loader.problem("contacts_file", f"cannot read {path}: {exc}")
        return out
    if len(text) > _MAX_CONTACTS_FILE:
        loader.problem("contacts_file", f"{path} is larger than {_MAX_CONTACTS_FILE} characters")
        return out
    rows = csv.reader(text.splitlines())
    try:
        header = [h.strip().lower() for h in next(rows, [])]
        if header != ["alias", "name", "number"]:
            loader.problem("contacts_file", f"{path}: the first line must be the columns alias,name,number, got {','.join(header) or 'nothing'}")
            return out
        for line, row in enumerate(rows, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"contacts_file[line {line}]"
            if len(row) != 3:
                loader.problem(where, f"expected 3 columns (alias,name,number), got {len(row)}")
                continue
            contact = _contact(loader, where, row[0].strip(), row[1], row[2])
            if contact is not None:
                out.append((where, contact))
    except csv.Error as exc:
        loader.problem("contacts_file", f"{path}: not CSV: {exc}")
    return out
