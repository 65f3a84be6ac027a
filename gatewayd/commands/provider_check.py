"""``gatewayd provider-check``: read every provider path gatewayd uses, once, and say which answer as expected (docs/provider.md, Checking a new account).

Read-only by construction: besides the token POST it calls only
``ProviderClient.get_raw`` (GET), so it is safe on a production account.
It never sends, cancels, retries, deletes or changes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gatewayd.commands.common import EXIT_FAILURE, EXIT_OK, load
from gatewayd.config import Config
from gatewayd.provider.client import (
    INFERRED_PATHS,
    PAGE_SIZE,
    PROVIDER_DATETIME_FORMAT,
    ProviderClient,
    ProviderError,
)

__all__ = ["CheckLine", "EXPECTED_FIELDS", "check_provider", "configured_extensions", "main"]

# The fields gatewayd reads of each answer (docs/provider.md, The provider's
# API, field by field): ``required`` ones it cannot work without, ``optional``
# ones it uses when present. Anything else is reported as new.
EXPECTED_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "token": (frozenset({"access_token"}), frozenset({"expires_in", "token_type"})),
    "user": (frozenset({"client_id"}), frozenset({"extension_id", "timezone", "access"})),
    "extensions": (frozenset({"id", "type", "status"}), frozenset({"name", "label", "extension_group_id", "client_id"})),
    "fax_mailto": (frozenset({"fax_mailto"}), frozenset()),
    "fax_out": (frozenset({"id", "status"}), frozenset({"dst_num", "datetime"})),
    "fax_in": (
        frozenset({"uuid", "extension_id"}),
        frozenset({"caller_id", "client_id", "datetime", "destination", "extension_group_id", "file_size"}),
    ),
}
#: Paths the check does not read: they need an id, or would change something.
NOT_PROBED = {
    "extension": "not read (the list above covers it)",
    "fax_out_one": "not read (needs a sent fax's id)",
    "fax_in_one": "not read (downloading a received fax is left to the daemon)",
}


@dataclass
class CheckLine:
    """One path's verdict, printed as one line."""

    key: str
    method: str
    template: str
    ok: bool | None  # None: not read
    status: int | None = None
    items: int | None = None
    missing: list[str] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    note: str = ""
    extension: int | None = None
    overridden: bool = False

    def render(self) -> str:
        verdict = "SKIP" if self.ok is None else ("OK" if self.ok else "FAIL")
        where = f" [extension {self.extension}]" if self.extension is not None else ""
        parts = [f"{verdict:4}  {self.key:11} {self.method:4} {self.template}{where}"]
        if self.overridden:
            parts.append("(overridden)")
        if self.ok is not None:
            parts.append(f"HTTP {self.status if self.status is not None else '-'}")
        if self.items is not None:
            parts.append(f"{self.items} item{'s' if self.items != 1 else ''}")
        if self.missing:
            parts.append("missing " + ", ".join(self.missing))
        if self.optional_missing:
            parts.append("absent " + ", ".join(self.optional_missing))
        if self.new:
            parts.append("new " + ", ".join(self.new))
        if self.ok is not None and self.status is not None and 200 <= self.status < 300 and not (self.missing or self.optional_missing or self.new):
            parts.append("fields as expected" if self.items != 0 else "no items to compare fields")
        if self.key in INFERRED_PATHS and self.ok is not None:
            parts.append("inferred path: confirmed" if self.ok else "inferred path: NOT confirmed")
        if self.note:
            parts.append(self.note)
        return "  ".join(parts)


def configured_extensions(config: Config) -> list[int]:
    """Every extension the configuration names (empty: use the account's fax extensions)."""
    ids = {config.provider.extension} if config.provider.extension else set()
    ids.update(r.extension for r in config.senders if r.extension)
    ids.update(u.extension for u in config.smtp.users if u.extension)
    ids.update(config.inbound.extensions)
    return sorted(ids)


def _compare(line: CheckLine, rows: Iterable[Mapping[str, Any]], key: str) -> None:
    required, optional = EXPECTED_FIELDS[key]
    seen: set[str] = set()
    common: set[str] | None = None
    for row in rows:
        seen |= set(row)
        common = set(row) if common is None else common & set(row)
    if common is None:  # no items: nothing to compare
        return
    line.missing = sorted(required - common)
    line.optional_missing = sorted(optional - seen)
    line.new = sorted(seen - required - optional)
    if line.missing:
        line.ok = False


def _rows(body: Any) -> list[Mapping[str, Any]] | None:
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list) and all(isinstance(r, dict) for r in body):
        return body
    return None


class _Checker:
    def __init__(self, client: ProviderClient, overridden: set[str]) -> None:
        self.client = client
        self.overridden = overridden
        self.lines: list[CheckLine] = []

    async def get(
        self, key: str, args: Mapping[str, Any], params: Mapping[str, Any] | None = None,
        *, extension: int | None = None, listing: bool = False,
    ) -> Any:
        line = CheckLine(key, "GET", self.client.paths[key], True, extension=extension,
                         overridden=key in self.overridden)
        self.lines.append(line)
        try:
            resp = await self.client.get_raw(key, args, params)
        except ProviderError as exc:
            line.ok, line.status, line.note = False, exc.http_status, str(exc)
            return None
        line.status = resp.status_code
        try:
            body = json.loads(resp.content)
        except ValueError:
            line.ok, line.note = False, "the answer is not JSON"
            return None
        rows = _rows(body)
        if rows is None or (listing and not isinstance(body, list)) or (not listing and not isinstance(body, dict)):
            line.ok, line.note = False, f"expected a JSON {'list' if listing else 'object'}"
            return None
        line.items = len(rows)
        _compare(line, rows, key)
        return body


async def check_provider(config: Config, client: ProviderClient, now: dt.datetime | None = None) -> list[CheckLine]:
    """Read each path once (GET, after the token POST); one CheckLine per path read."""
    overridden = {k for k, _ in config.provider.paths}
    checker = _Checker(client, overridden)
    lines = checker.lines
    token = CheckLine("token", "POST", config.provider.token_url, True)
    lines.append(token)
    # The user GET fetches the token first: its line reports the POST.
    user = await checker.get("user", {})
    user_line = lines[-1]
    if client.token_fields:
        token.status = 200
        _compare(token, [dict.fromkeys(client.token_fields)], "token")
    else:
        token.ok, token.status, token.note = False, user_line.status, user_line.note or "no token"
        del lines[-1]  # the user GET never went out
        return lines
    if not isinstance(user, dict) or "client_id" not in user:
        return lines
    exts = await checker.get(
        "extensions", {"client_id": user["client_id"]},
        {"type": "fax", "status": "active", "page": 1, "per_page": PAGE_SIZE}, listing=True,
    )
    if exts is None:
        return lines
    listed = {int(e["id"]) for e in exts if e.get("type") == "fax" and e.get("status") == "active" and "id" in e}
    wanted = configured_extensions(config) or sorted(listed)
    if not wanted:
        lines[-1].ok, lines[-1].note = False, "the account has no active fax extension"
    tz = _zone(user)
    now = now or dt.datetime.now(dt.UTC)
    window = {
        "start_datetime": (now - dt.timedelta(days=1)).astimezone(tz).strftime(PROVIDER_DATETIME_FORMAT),
        "end_datetime": now.astimezone(tz).strftime(PROVIDER_DATETIME_FORMAT),
        "order": "asc",
        "page": 1,
        "per_page": PAGE_SIZE,
    }
    for ext in wanted:
        if ext not in listed:
            lines.append(CheckLine("extensions", "GET", client.paths["extensions"], False, extension=ext,
                                   note="configured, but not among the account's active fax extensions"))
        args = {"extension_id": ext}
        await checker.get("fax_mailto", args, extension=ext)
        await checker.get("fax_out", args, {"page": 1, "per_page": PAGE_SIZE}, extension=ext, listing=True)
        await checker.get("fax_in", args, window, extension=ext, listing=True)
    for key, why in NOT_PROBED.items():
        lines.append(CheckLine(key, "GET", client.paths[key], None, note=why, overridden=key in overridden))
    return lines


def _zone(user: Mapping[str, Any]) -> dt.tzinfo:
    try:
        return ZoneInfo(str(user.get("timezone") or "Europe/Moscow"))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("Europe/Moscow")


def report(config: Config, lines: list[CheckLine], out: TextIO) -> bool:
    """Print the lines and a verdict; True when every path read answered as expected."""
    print(f"provider-check: {config.provider.base_url} (client {config.provider.client_id}); read-only", file=out)
    for line in lines:
        print(line.render(), file=out)
    failed = [line for line in lines if line.ok is False]
    if failed:
        keys = sorted({line.key for line in failed})
        print(f"FAILED: {', '.join(keys)} (docs/provider.md, Checking a new account)", file=out)
        return False
    print("all paths answered as expected", file=out)
    return True


async def run_check(config: Config, out: TextIO, client: ProviderClient | None = None) -> bool:
    # One attempt per call: a check should say what it saw, not retry it away.
    client = client or ProviderClient.from_config(config.provider, max_attempts=1)
    async with client:
        lines = await check_provider(config, client)
    return report(config, lines, out)


def main(args: argparse.Namespace) -> int:
    config = load(args)  # exit 2 on a configuration error
    ok = asyncio.run(run_check(config, sys.stdout))
    return EXIT_OK if ok else EXIT_FAILURE
