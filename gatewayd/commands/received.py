"""``gatewayd received`` and ``gatewayd mailto`` (docs/operations.md; docs/inbound.md, Commands).

``received`` reads the received-fax ledger in the state directory (SQLite
WAL: safe while the daemon runs). ``mailto`` talks to the provider with the
configured credentials: it shows an extension's ``fax_mailto``, or sets it
after every address was checked locally, so a typo never reaches the
provider.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from gatewayd.commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load, open_store
from gatewayd.commands.terminal import safe_text
from gatewayd.config import Config, is_email_address
from gatewayd.logs import setup_logging
from gatewayd.provider.client import AuthError, NotFound, ProviderClient, ProviderError, RateLimited
from gatewayd.store import StoreError

# The ledger's words, and what the command shows for them.
_STATE_WORDS = {"queued": "queued", "relayed": "relayed", "no_recipient": "held"}


def _cell(text: str) -> str:
    # Caller ids and notes come from the provider: escaped (gatewayd/commands/terminal.py).
    return safe_text(text) or "-"


def _state_text(state: str, mail_state: str | None, mail_error: str) -> str:
    word = _STATE_WORDS.get(state, state)
    if state == "queued" and mail_state == "failed":
        return "mail-refused"  # the relay refused the email for good; the admin was told
    if state == "queued" and mail_error:
        return "retrying"  # still queued, the relay deferred it
    return word


def received(args: argparse.Namespace) -> int:
    """List received faxes: time, uuid, caller, destination, state, recipients."""
    limit = getattr(args, "limit", 50)
    if limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_USAGE)
    store = open_store(load(args))
    try:
        rows = store.received_with_mail(limit=limit)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(f"{'RECEIVED':25}  {'UUID':36}  {'CALLER':16}  {'DESTINATION':16}  {'STATE':12}  RECIPIENTS")
    for fax, mail_state, mail_error in rows:
        state = _state_text(fax.state, mail_state, mail_error)
        rcpts = ", ".join(fax.recipients) if fax.recipients else (f"- ({fax.note})" if fax.note else "-")
        print(f"{_cell(fax.fax_time):25}  {_cell(fax.uuid):36}  {_cell(fax.caller_id):16}  {_cell(fax.destination):16}  {state:12}  {_cell(rcpts)}")
    return EXIT_OK


def parse_address_list(text: str) -> list[str]:
    """``a@x,b@y`` -> addresses; an empty string clears. Invalid -> CommandError (exit 2)."""
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        return []
    addresses: list[str] = []
    for part in parts:
        if not part:
            raise CommandError(f"empty address in {text!r} (addresses are separated by single commas)", EXIT_USAGE)
        if not is_email_address(part):
            raise CommandError(f"invalid address {part!r}: expected user@example.com; nothing was changed", EXIT_USAGE)
        addresses.append(part)
    return addresses


async def _mailto(config: Config, extension: int, addresses: Sequence[str] | None) -> list[str]:
    client = ProviderClient.from_config(config.provider)
    try:
        if addresses is None:
            return await client.get_fax_mailto(extension)
        return await client.set_fax_mailto(extension, list(addresses))
    finally:
        await client.aclose()


def mailto(args: argparse.Namespace) -> int:
    """Show or set an extension's fax_mailto at the provider."""
    extension = args.extension
    if extension < 1:
        raise CommandError("the extension id must be a positive integer", EXIT_USAGE)
    # Checked before the configuration is even read: nothing may reach the
    # provider when one address is wrong.
    addresses = None if args.addresses is None else parse_address_list(args.addresses)
    config = load(args)
    # Log events (e.g. the client's retries) go to stderr, as configured:
    # stdout carries only the addresses, for scripts.
    setup_logging(config.log.level, config.log.format)
    if not config.provider.client_id or not config.provider.client_secret:
        raise CommandError("provider.client_id and provider.client_secret are required to talk to the provider", EXIT_USAGE)
    try:
        result = asyncio.run(_mailto(config, extension, addresses))
    except NotFound:
        raise CommandError(f"extension {extension}: not found at the provider, or not a fax extension", EXIT_FAILURE) from None
    except RateLimited as exc:
        raise CommandError(f"the provider's rate limit is reached; try again in {exc.retry_after:.0f} s", EXIT_FAILURE) from None
    except AuthError as exc:
        raise CommandError(f"the provider refused the credentials or the rights: {exc}", EXIT_FAILURE) from None
    except ProviderError as exc:
        raise CommandError(f"provider error: {exc}", EXIT_FAILURE) from None
    for address in result:
        print(safe_text(address))  # the provider's text
    if not result:
        print(f"extension {extension} has no fax_mailto", file=sys.stderr)
    return EXIT_OK


__all__ = ["mailto", "parse_address_list", "received"]
