"""Prometheus metrics, one registry per running app (no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.jobs = Gauge("gatewayd_jobs", "Fax jobs by state", ["state"], registry=r)
        self.submissions = Counter("gatewayd_submissions", "Fax submissions to the provider by result", ["result"], registry=r)
        self.provider_errors = Counter("gatewayd_provider_errors", "Provider API errors by kind", ["kind"], registry=r)
        self.provider_latency = Histogram(
            "gatewayd_provider_request_seconds", "Provider API request latency", ["method", "path"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.smtp_replies = Counter("gatewayd_smtp_replies", "SMTP replies by code", ["code"], registry=r)
        self.inbound_relayed = Counter("gatewayd_inbound_faxes_relayed", "Received faxes queued for email", registry=r)
        self.inbound_held = Gauge("gatewayd_inbound_faxes_without_recipient", "Received faxes held for lack of a recipient", registry=r)
        self.outbox_depth = Gauge("gatewayd_outbox_depth", "Emails waiting in the outbox", registry=r)
        self.outbox_oldest = Gauge("gatewayd_outbox_oldest_age_seconds", "Age of the oldest email waiting in the outbox", registry=r)
        self.mail_deliveries = Counter("gatewayd_mail_deliveries", "Outbox delivery attempts by result", ["result"], registry=r)
        self.rate_limit_waits = Counter("gatewayd_rate_limit_waits", "Waits imposed by rate limits", ["scope"], registry=r)
        self.reports = Counter("gatewayd_reports", "Status reports queued by outcome", ["outcome"], registry=r)

    def observe_provider_request(self, method: str, path: str, status: int | None, seconds: float) -> None:
        """Callback for ProviderClient(on_request=...)."""
        self.provider_latency.labels(method, path).observe(seconds)
        if status is None:
            self.provider_errors.labels("unreachable").inc()
        elif status == 429:
            self.provider_errors.labels("rate_limited").inc()
        elif status >= 500:
            self.provider_errors.labels("server_error").inc()
        elif status == 401:
            self.provider_errors.labels("auth").inc()
        elif status >= 400:
            self.provider_errors.labels("rejected").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
