"""``gatewayd send NUMBER FILE... [--from ADDR] [--extension ID] [--subject S]``.

Queues a fax through the same pipeline as the SMTP listener: the number
policy, the document builder (files recognised by their bytes, not their
names), the hourly limit, and ``Intake.accept``, which writes the document
and the job to the state directory. The running daemon's sender picks the
job up on its next look at the store (within seconds); the daemon need not
be told. Office documents are stored as they came, for the daemon's
converter (its next look: within 30 seconds), as from email. On PostgreSQL
the running daemons are told at once (one NOTIFY, gatewayd/wakerelay.py).

Who may use it: whoever can write the state directory, i.e. an
administrator. So ``--from`` is optional:

* without ``--from``: no ``[[senders]]`` rule applies (no hourly limit,
  ``documents.max_pages``), the job is sent from ``--extension`` or
  ``provider.extension``, and no report email is sent;
* with ``--from ADDR``: ADDR must match a ``[[senders]]`` rule, exactly as an
  envelope sender over SMTP; that rule's extension, page limit and hourly
  limit apply, and the report goes to ADDR. ``--extension`` still wins.

Exit 0 and ``queued as <id>`` on stdout; a refusal prints its reason (docs/smtp.md, Replies)
on stderr and exits 1; usage and configuration errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

from gatewayd.commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load, open_store
from gatewayd.config import Config, is_email_address
from gatewayd.documents.office import office_unavailable
from gatewayd.documents.officekinds import OFFICE_KINDS
from gatewayd.email_to_fax.errors import InsufficientStorage, IntakeRefused, SenderNotAuthorised
from gatewayd.email_to_fax.intake import Intake, message_from_files
from gatewayd.email_to_fax.parse import ParsedMessage
from gatewayd.email_to_fax.policy import Authorisation, Destination, NumberPolicy, SenderPolicy, is_bounce_address
from gatewayd.health import Health
from gatewayd.logs import setup_logging
from gatewayd.metrics import Metrics
from gatewayd.runtime import NoProvider, Runtime
from gatewayd.store import Store
from gatewayd.wakerelay import new_origin, notify_now

EXIT_REFUSED = 1


def authorise(config: Config, sender: str, extension: int | None) -> Authorisation:
    """The CLI's authorisation: an administrator, optionally speaking for ``sender``."""
    docs_max = config.documents.max_pages
    if sender:
        rule = SenderPolicy(config).match_rule(sender)
        if rule is None or is_bounce_address(sender):
            raise SenderNotAuthorised()
        chosen = extension or rule.extension or config.provider.extension
        max_pages = min(rule.max_pages, docs_max) if rule.max_pages else docs_max
        return Authorisation(extension=chosen, max_pages=max_pages, rule=rule, user=None, report_to=sender)
    return Authorisation(extension=extension or config.provider.extension, max_pages=docs_max, rule=None, user=None, report_to="")


def main(args: argparse.Namespace) -> int:
    config = load(args)
    # Log lines (e.g. an internal failure) go to stderr; stdout is the answer.
    setup_logging("warning", "console", stream=sys.stderr)
    sender = (args.sender or "").strip()
    if sender and not is_email_address(sender):
        raise CommandError(f"--from: not an email address: {sender!r}", EXIT_USAGE)
    if args.extension is not None and args.extension <= 0:
        raise CommandError("--extension: expected a positive extension id", EXIT_USAGE)
    if not args.files:
        raise CommandError("give at least one FILE", EXIT_USAGE)
    try:
        # People write "8 (495) 123-45-67"; the address form has no blanks or brackets.
        destination = NumberPolicy(config.numbers).check(re.sub(r"[\s()]", "", args.number), args.number.strip())
        authorisation = authorise(config, sender, args.extension)
    except IntakeRefused as exc:
        raise CommandError(exc.text, EXIT_REFUSED) from None
    if not authorisation.extension:
        raise CommandError("no extension to send from: give --extension or set provider.extension (or the rule's extension)", EXIT_USAGE)
    try:
        parsed = message_from_files(args.files, sender=sender, subject=args.subject or "")
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename}: {exc.strerror}", EXIT_USAGE) from None
    except IntakeRefused as exc:
        raise CommandError(exc.text, EXIT_REFUSED) from None

    store = open_store(config)
    try:
        ids = asyncio.run(_accept(config, store, parsed, authorisation, destination))
    except InsufficientStorage as exc:
        raise CommandError(f"not queued: {exc.text}: {exc.detail}; free some space or lower storage.min_free", EXIT_FAILURE) from None
    except IntakeRefused as exc:
        raise CommandError(exc.text, EXIT_REFUSED) from None
    finally:
        store.close()
    print("queued as " + " ".join(str(i) for i in ids))
    return EXIT_OK


async def _accept(config: Config, store: Store, parsed: ParsedMessage, authorisation: Authorisation, destination: Destination) -> list[int]:
    # Queues only: the daemon's sender sends (so no provider client here).
    # The intake's wakes ("sender", or "converter" for office documents) are
    # collected and, on PostgreSQL, told to every running daemon in one NOTIFY
    # (gatewayd/wakerelay.py): sent at once instead of at its next poll.
    woken: list[str] = []
    rt = Runtime(config=config, store=store, provider=NoProvider(), metrics=Metrics(), health=Health(), relay_wake=woken.append)
    # Office documents are taken as the daemon's intakes take them on this
    # machine (the same decision); the daemon's converter converts them,
    # LibreOffice is never started here (docs/documents.md, Office documents).
    # Looked for only when a file needs it: the probe runs a few processes.
    office = any(a.kind in OFFICE_KINDS for a in parsed.attachments) and not office_unavailable(config.documents)
    ids = await Intake(rt, office=office).accept(
        b"",
        authorisation=authorisation,
        destinations=[destination],
        source="cli",
        report_to=authorisation.report_to,
        parsed=parsed,
        every_file=True,
    )
    if store.postgres is not None:
        await store.run(notify_now, store, new_origin(config.storage.node_name), woken)
    return ids
