"""The store's schema, as an ordered list of migrations (SQLite ``user_version`` N = the first N applied).

Append only: a released migration is never edited. docs/architecture.md,
"Storage layout", describes the tables.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        number TEXT NOT NULL,
        dst_num TEXT NOT NULL,
        extension INTEGER NOT NULL,
        report_to TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL,
        message_id TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        document TEXT NOT NULL,
        pages INTEGER NOT NULL,
        doc_bytes INTEGER NOT NULL,
        provider_id INTEGER,
        provider_status TEXT NOT NULL DEFAULT '',
        submitted_at REAL,
        finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        auto_retries_used INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        rule_key TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE UNIQUE INDEX jobs_provider ON jobs(extension, provider_id) WHERE provider_id IS NOT NULL;
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at REAL NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL DEFAULT '',
        mail_from TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE TABLE received (
        uuid TEXT PRIMARY KEY,
        extension_id INTEGER NOT NULL,
        caller_id TEXT NOT NULL DEFAULT '',
        destination TEXT NOT NULL DEFAULT '',
        fax_time TEXT NOT NULL DEFAULT '',
        file_size INTEGER NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL,
        state TEXT NOT NULL,
        recipients TEXT NOT NULL DEFAULT '[]',
        outbox_id INTEGER REFERENCES outbox(id),
        relayed_at REAL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX received_state ON received(state);
    CREATE TABLE sender_usage (
        rule_key TEXT NOT NULL,
        at REAL NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX sender_usage_rule ON sender_usage(rule_key, at);
    CREATE TABLE intake_keys (
        key TEXT PRIMARY KEY,
        at REAL NOT NULL,
        job_ids TEXT NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: a job's final report is queued once, in the same commit that sets this
    """
    ALTER TABLE jobs ADD COLUMN reported_at REAL;
    CREATE INDEX jobs_unreported ON jobs(finished_at) WHERE finished_at IS NOT NULL AND reported_at IS NULL;
    """,
    # 3: after a restore, until when a job's upload may have been made
    # (docs/operations.md, Backup and restore); a received fax's deletion at
    # the provider after its relay (inbound.delete_after_relay): '' (none
    # asked), 'pending' or 'done'
    """
    ALTER TABLE jobs ADD COLUMN reconcile_until REAL;
    ALTER TABLE received ADD COLUMN provider_delete TEXT NOT NULL DEFAULT '';
    ALTER TABLE received ADD COLUMN delete_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE received ADD COLUMN delete_next_at REAL;
    CREATE INDEX received_delete ON received(delete_next_at) WHERE provider_delete = 'pending';
    """,
    # 4: each recipient's own cover page, stored apart from the shared attachments
    """
    ALTER TABLE jobs ADD COLUMN cover TEXT NOT NULL DEFAULT '';
    """,
    # 5: the web console (docs/web.md): its sessions, the account a job was
    # sent under, and the indexes its job list pages by (newest first)
    """
    CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX web_sessions_expiry ON web_sessions(expires_at);
    ALTER TABLE jobs ADD COLUMN account TEXT NOT NULL DEFAULT '';
    CREATE INDEX jobs_account ON jobs(account, id) WHERE account != '';
    CREATE INDEX jobs_report_to ON jobs(report_to COLLATE NOCASE, id);
    CREATE INDEX jobs_number ON jobs(number, id);
    CREATE INDEX received_seen ON received(first_seen);
    """,
    # 6: retention (gatewayd/store/retention.py): what was purged, and the indexes its small batches need
    """
    ALTER TABLE jobs ADD COLUMN document_purged_at REAL;
    ALTER TABLE outbox ADD COLUMN purged_at REAL;
    CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_document_kept ON jobs(finished_at) WHERE finished_at IS NOT NULL AND document_purged_at IS NULL;
    CREATE INDEX jobs_document ON jobs(document);
    CREATE INDEX outbox_done ON outbox(COALESCE(sent_at, next_attempt_at)) WHERE state != 'pending';
    CREATE INDEX outbox_body_kept ON outbox(COALESCE(sent_at, next_attempt_at)) WHERE state != 'pending' AND purged_at IS NULL;
    CREATE INDEX received_relayed ON received(relayed_at) WHERE state = 'relayed';
    CREATE INDEX received_outbox ON received(outbox_id);
    CREATE INDEX intake_keys_at ON intake_keys(at);
    CREATE INDEX sender_usage_at ON sender_usage(at);
    """,
    # 7: office documents converted after the 250 (docs/documents.md, Office documents)
    """
    CREATE TABLE conversions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        parts TEXT NOT NULL,
        spec TEXT NOT NULL,
        job_ids TEXT NOT NULL DEFAULT '[]',
        finished_at REAL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX conversions_state ON conversions(state);
    """,
    # 8: several nodes on one PostgreSQL store (docs/deployment.md, Several nodes):
    # documents as rows (PostgreSQL keeps them there; SQLite keeps files), the
    # leases that keep each piece of work on one node, and which node took a
    # job in and which node submits it
    """
    CREATE TABLE documents (
        name TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    ALTER TABLE jobs ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
    """,
]
