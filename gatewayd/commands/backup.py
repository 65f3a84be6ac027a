"""``gatewayd backup DIR``: a consistent copy of the state while the daemon runs (docs/operations.md, Backup and restore)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from gatewayd.commands.common import EXIT_OK, CommandError, load, open_store
from gatewayd.config import redact_url
from gatewayd.store import StoreError
from gatewayd.store.backup import make_backup

__all__ = ["backup"]


def backup(args: argparse.Namespace) -> int:
    config = load(args)
    if config.storage.postgres:
        # Several nodes share the database: a copy of one node's state directory
        # is no backup of it (docs/operations.md, Backup and restore).
        raise CommandError(
            f"backup does not apply to a PostgreSQL store ({redact_url(config.storage.database_url)}): "
            "the queue and the documents are in the database; back it up with its own tools "
            "(pg_dump, or the backups of a managed PostgreSQL or Patroni)")
    # Opened first so an older store is migrated before it is copied.
    open_store(config).close()
    try:
        result = make_backup(Path(config.state_dir), Path(args.dir))
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    when = dt.datetime.fromtimestamp(result.taken_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"backup {result.backup_id} taken {when} in {result.directory}")
    print(f"  database {result.database_bytes} bytes, {result.documents} documents ({result.document_bytes} bytes)")
    if result.missing_documents:
        print(f"  {len(result.missing_documents)} documents were already gone from the state directory (finished jobs):")
        for sha in result.missing_documents[:20]:
            print(f"    {sha}")
    print("restore: stop the daemon, put the directory's contents in place as the state directory, start it")
    return EXIT_OK
