"""Prometheus metrics, one registry per running app (no global state).

docs/operations.md describes every family and the alerts to build on them.
Labelled families are initialised with their known label values, so each
series exists (at 0) from the first scrape and ``rate()``/``increase()``
see the first event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gatewayd import __version__
from gatewayd.jobstates import ACTIVE_STATES, JOB_STATES
from gatewayd.provider.paths import PATHS

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# No "<name>_created" gauge next to every counter: it doubles the series for
# nothing Prometheus needs (process-wide switch; gatewayd has only these registries).
disable_created_metrics()

# Known label values (others may appear; these exist from the start).
SUBMISSION_RESULTS = ("ok", "adopted", "requeued", "ambiguous", "unavailable", "auth_error", "rejected")
PROVIDER_ERROR_KINDS = ("unreachable", "rate_limited", "server_error", "auth", "rejected")
SMTP_CODES = ("250", "421", "450", "451", "452", "530", "535", "550", "552", "553", "554")
MAIL_RESULTS = ("sent", "deferred", "failed")
RATE_LIMIT_SCOPES = ("provider", "inbound")
REPORT_OUTCOMES = ("sent", "failed", "canceled", "error", "rejected")
OUTBOX_STATES = ("pending", "sent", "failed")
# gatewayd/store/retention.py KINDS (not imported: metrics stay free of the store).
PURGE_KINDS = ("received", "mail", "documents", "jobs", "emails", "counters")
# The services that run on one node at a time, each under a lease named after it (gatewayd/leadership.py, built in gatewayd/daemon.py).
LEASES = ("tracker", "reports", "outbox", "inbound", "imap", "purge", "converter")


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        # Jobs (gauges refreshed from the store at each scrape).
        self.jobs = Gauge("gatewayd_jobs", "Fax jobs by state", ["state"], registry=r)
        self.jobs_oldest = Gauge(
            "gatewayd_jobs_oldest_age_seconds",
            "Age of the oldest unfinished job in each active state (0 when none)", ["state"], registry=r,
        )
        self.submissions = Counter("gatewayd_submissions", "Fax submissions to the provider by result", ["result"], registry=r)
        self.reports = Counter("gatewayd_reports", "Status reports queued by outcome", ["outcome"], registry=r)
        # Provider API.
        self.provider_errors = Counter("gatewayd_provider_errors", "Provider API errors by kind", ["kind"], registry=r)
        self.provider_latency = Histogram(
            "gatewayd_provider_request_seconds", "Provider API request latency", ["method", "path"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.provider_up = Gauge(
            "gatewayd_provider_up",
            "1 unless the provider has failed for longer than three poll intervals (as /healthz)", registry=r,
        )
        self.provider_quota_remaining = Gauge(
            "gatewayd_provider_quota_remaining",
            "Provider requests left in the hour, as last reported by X-RateLimit-Remaining (-1: not reported yet)", registry=r,
        )
        self.provider_path_failing = Gauge(
            "gatewayd_provider_path_failing",
            "1 while a provider path answers 404/405 on consecutive calls (a wrong path; as /healthz)", ["path"], registry=r,
        )
        self.rate_limit_waits = Counter("gatewayd_rate_limit_waits", "Waits imposed by rate limits", ["scope"], registry=r)
        # Email to fax.
        self.smtp_replies = Counter("gatewayd_smtp_replies", "SMTP replies by code", ["code"], registry=r)
        # Fax to email.
        self.inbound_relayed = Counter("gatewayd_inbound_faxes_relayed", "Received faxes queued for email", registry=r)
        self.inbound_held = Gauge("gatewayd_inbound_faxes_without_recipient", "Received faxes held for lack of a recipient", registry=r)
        # Outbox.
        self.outbox_depth = Gauge("gatewayd_outbox_depth", "Emails waiting in the outbox", registry=r)
        self.outbox_oldest = Gauge("gatewayd_outbox_oldest_age_seconds", "Age of the oldest email waiting in the outbox", registry=r)
        self.mail_deliveries = Counter("gatewayd_mail_deliveries", "Outbox delivery attempts by result", ["result"], registry=r)
        # Storage and retention (docs/operations.md, Retention and privacy).
        self.store_file_bytes = Gauge("gatewayd_store_file_bytes", "Size of the SQLite database file and its WAL", registry=r)
        self.document_bytes = Gauge("gatewayd_document_bytes", "Size of the fax document files", registry=r)
        self.outbox_emails = Gauge("gatewayd_outbox_emails", "Outbox rows by state (sent and failed rows stay until retention.jobs)", ["state"], registry=r)
        self.storage_free_bytes = Gauge("gatewayd_storage_free_bytes", "Free space on the state directory's file system", registry=r)
        self.purged = Counter("gatewayd_purged_rows", "Rows (documents: files) purged by retention, by kind", ["kind"], registry=r)
        self.purge_seconds = Gauge("gatewayd_purge_last_seconds", "Duration of the last purge round", registry=r)
        # The process.
        self.healthy = Gauge("gatewayd_healthy", "1 when /healthz answers 200", registry=r)
        self.service_restarts = Counter(
            "gatewayd_service_restarts", "Internal services restarted after a crash", ["service"], registry=r,
        )
        self.info = Gauge("gatewayd_info", "Build information (always 1)", ["version"], registry=r)
        self.start_time = Gauge("gatewayd_start_time_seconds", "Unix time the daemon started", registry=r)
        # Several nodes on one database (docs/deployment.md, Several nodes).
        self.node = Gauge("gatewayd_node_info", "This node's storage.node_name (always 1)", ["node"], registry=r)
        self.lease_held = Gauge(
            "gatewayd_lease_held", "1 while this node holds the lease and runs the service named after it", ["lease"], registry=r,
        )

        self.info.labels(__version__).set(1)
        self.start_time.set(time.time())
        self.provider_up.set(1)
        self.provider_quota_remaining.set(-1)
        self.healthy.set(1)
        for state in JOB_STATES:
            self.jobs.labels(state)
        for state in ACTIVE_STATES:
            self.jobs_oldest.labels(state)
        for values, family in (
            (SUBMISSION_RESULTS, self.submissions),
            (PROVIDER_ERROR_KINDS, self.provider_errors),
            (SMTP_CODES, self.smtp_replies),
            (MAIL_RESULTS, self.mail_deliveries),
            (RATE_LIMIT_SCOPES, self.rate_limit_waits),
            (REPORT_OUTCOMES, self.reports),
            (tuple(PATHS), self.provider_path_failing),
            (OUTBOX_STATES, self.outbox_emails),
            (PURGE_KINDS, self.purged),
            (LEASES, self.lease_held),
        ):
            for value in values:
                family.labels(value)

    def observe_provider_request(self, method: str, path: str, status: int | None, seconds: float) -> None:
        """Callback for ProviderClient(on_request=...)."""
        self.provider_latency.labels(method, path).observe(seconds)
        if status is None:
            self.provider_errors.labels("unreachable").inc()
        elif status == 429:
            self.provider_errors.labels("rate_limited").inc()
        elif status >= 500:
            self.provider_errors.labels("server_error").inc()
        elif status in (401, 403):  # credentials, or the application's rights
            self.provider_errors.labels("auth").inc()
        elif status >= 400:
            self.provider_errors.labels("rejected").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
