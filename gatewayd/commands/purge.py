"""``gatewayd purge``: one retention round now, beside the running daemon or without it.

The same steps as the daemon's "purge" service (gatewayd/store/retention.py;
docs/operations.md, Retention and privacy), with the configuration's
``[retention]``. ``--dry-run`` changes nothing and lists what would go, per
kind, with counts and bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gatewayd.commands.common import EXIT_OK, CommandError, load, open_store
from gatewayd.documents.preview import Previews
from gatewayd.purger import prune_previews, retention_policy
from gatewayd.store import StoreError
from gatewayd.store.retention import KINDS, PurgeResult, RetentionPolicy, purge

# What each kind is, for the table (docs/operations.md, Retention and privacy).
KIND_WORDS = {
    "received": "received-fax records (relayed)",
    "mail": "email bodies (sent or refused)",
    "documents": "fax documents (files)",
    "jobs": "finished jobs with their history",
    "emails": "email records",
    "counters": "sender counters, intake keys, conversion records",
}


def _size(n: int) -> str:
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _retention_line(policy: RetentionPolicy) -> str:
    def days(seconds: float) -> str:
        return "for ever" if seconds <= 0 else f"{seconds / 86400:g}d"
    return (f"retention: documents {days(policy.documents)}, mail {days(policy.mail)}, "
            f"jobs {days(policy.jobs)}, received {days(policy.received)}")


def format_result(result: PurgeResult, policy: RetentionPolicy) -> str:
    head = "would purge" if result.dry_run else "purged"
    lines = [_retention_line(policy), f"{'KIND':10}  {'ROWS':>8}  {'BYTES':>10}  WHAT ({head})"]
    for kind in KINDS:
        t = result.tallies[kind]
        lines.append(f"{kind:10}  {t.rows:>8}  {_size(t.bytes):>10}  {KIND_WORDS[kind]}")
    total_rows = sum(t.rows for t in result.tallies.values())
    total_bytes = sum(t.bytes for t in result.tallies.values())
    lines.append(f"{'total':10}  {total_rows:>8}  {_size(total_bytes):>10}")
    if not result.dry_run:
        lines.append(f"{result.vacuumed_pages} free pages returned to the file system; "
                     f"{result.steps} steps, the longest {result.longest_step * 1000:.1f} ms, {result.seconds:.2f} s in all")
    else:
        lines.append("nothing was changed (--dry-run)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    config = load(args)
    policy = retention_policy(config)
    store = open_store(config)
    try:
        if not args.dry_run and store.dialect == "sqlite":  # PostgreSQL's autovacuum looks after its own files
            try:
                store.ensure_incremental_vacuum()
            except StoreError as exc:
                # The one-time VACUUM needs the database to itself (a busy
                # daemon): purge anyway; the file shrinks once it is switched.
                print(f"note: the database is not in incremental vacuum mode yet ({exc}); "
                      "it is switched at the daemon's next start", file=sys.stderr)
        result = asyncio.run(purge(store, policy, dry_run=args.dry_run))
        if not args.dry_run:  # and the console's previews of what went (docs/web.md)
            asyncio.run(prune_previews(store, Previews(config.state_dir)))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(format_result(result, policy))
    return EXIT_OK
