"""/healthz and /metrics: a real daemon against the provider simulator and a
mail sink (all on 127.0.0.1), the provider then taken away; and the health
verdict's timing on a fake clock."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support.service import DOMAIN, NUMBER, NotifySocket, Ports, fax_email, gateway_config, http_get, send_fax, write_config

from gatewayd.config import load_config
from gatewayd.daemon import Runtime
from gatewayd.demo import sample_tiff
from gatewayd.health import Health
from gatewayd.http import HttpServer
from gatewayd.mailsink import MailSink
from gatewayd.metrics import Metrics
from gatewayd.provider.simulator import ProviderSimulator

ALICE = "alice@allowed.test"
RECEPTION = "reception@example.com"

REQUIRED_FAMILIES = {
    "gatewayd_jobs": "gauge",  # jobs by state
    "gatewayd_jobs_oldest_age_seconds": "gauge",
    "gatewayd_submissions": "counter",
    "gatewayd_provider_errors": "counter",  # by kind
    "gatewayd_provider_request_seconds": "histogram",  # provider latency
    "gatewayd_provider_up": "gauge",
    "gatewayd_smtp_replies": "counter",  # by code
    "gatewayd_inbound_faxes_relayed": "counter",
    "gatewayd_inbound_faxes_without_recipient": "gauge",
    "gatewayd_outbox_depth": "gauge",
    "gatewayd_outbox_oldest_age_seconds": "gauge",
    "gatewayd_rate_limit_waits": "counter",
    "gatewayd_mail_deliveries": "counter",
    "gatewayd_reports": "counter",
    "gatewayd_healthy": "gauge",
    "gatewayd_service_restarts": "counter",
    "gatewayd_lease_held": "gauge",  # by lease
    "gatewayd_node_info": "gauge",
}


def parse_metrics(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, sample_name: str | None = None, **labels: str) -> float:
    family = families[name]
    for s in family.samples:
        if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name or name}{labels} in {[(s.name, s.labels) for s in family.samples]}")


async def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


async def test_metrics_and_health_of_a_running_daemon(tmp_path: Path, notify_socket: NotifySocket, gateways: Any, pdf: bytes) -> None:
    sim = ProviderSimulator(send_delays=(0.3, 0.6))
    await sim.start()
    sim.add_extension(122, fax_mailto=RECEPTION)
    sink = await MailSink().start()
    try:
        ports = Ports()
        config = write_config(tmp_path / "config.toml", gateway_config(
            tmp_path / "state", ports, provider_url=sim.base_url, token_url=sim.token_url,
            inbound={"enabled": True, "extensions": [122], "poll_interval": "1s"}, relay=sink.relay,
        ))
        gw = await gateways(config, NOTIFY_SOCKET=notify_socket.address)
        await notify_socket.wait_for("READY=1", timeout=30)

        code, body = await http_get(ports.http, "/healthz")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["problems"] == [], body
        assert health["listeners"] == {"http": "up", "smtp": "up"}

        # Traffic: one fax sent, refusals, one fax received.
        rcpt = f"{NUMBER}@{DOMAIN}"
        assert (await send_fax(ports.smtp, ALICE, rcpt, fax_email(ALICE, rcpt, pdf))).startswith("250 ")
        assert (await send_fax(ports.smtp, "bob@other.test", rcpt, fax_email("bob@other.test", rcpt, pdf))).startswith("550 ")
        assert (await send_fax(ports.smtp, ALICE, f"sales@{DOMAIN}", b"")).startswith("553 ")
        await sink.wait_for(1, timeout=30)  # the status report
        sim.inject_received(122, sample_tiff(1), caller_id="74951234567", destination="78123092631")

        async def relayed() -> Any:
            return any("Fax from" in (m.message["Subject"] or "") for m in sink.messages)

        await _until(relayed, 30, "received fax relayed")

        async def scraped() -> Any:
            code, text = await http_get(ports.http, "/metrics")
            assert code == 200
            fams = parse_metrics(text)
            done = sample(fams, "gatewayd_inbound_faxes_relayed") >= 1 and sample(fams, "gatewayd_jobs", state="sent") == 1
            return fams if done else None

        fams = await _until(scraped, 15, "metrics after the traffic")
        for name, kind in REQUIRED_FAMILIES.items():
            assert name in fams, f"missing family {name}"
            assert fams[name].type == kind, (name, fams[name].type)
        assert sample(fams, "gatewayd_jobs", state="queued") == 0
        assert sample(fams, "gatewayd_submissions", "gatewayd_submissions_total", result="ok") == 1
        assert sample(fams, "gatewayd_smtp_replies", "gatewayd_smtp_replies_total", code="250") == 1  # only the reply to DATA, not EHLO/MAIL/RCPT
        assert sample(fams, "gatewayd_smtp_replies", "gatewayd_smtp_replies_total", code="550") == 1
        assert sample(fams, "gatewayd_smtp_replies", "gatewayd_smtp_replies_total", code="553") == 1
        assert sample(fams, "gatewayd_provider_request_seconds", "gatewayd_provider_request_seconds_count", method="POST") >= 1
        for kind in ("unreachable", "rate_limited", "server_error", "auth", "rejected"):
            assert sample(fams, "gatewayd_provider_errors", "gatewayd_provider_errors_total", kind=kind) == 0
        for scope in ("provider", "inbound"):
            assert sample(fams, "gatewayd_rate_limit_waits", "gatewayd_rate_limit_waits_total", scope=scope) == 0
        assert sample(fams, "gatewayd_mail_deliveries", "gatewayd_mail_deliveries_total", result="sent") >= 2
        assert sample(fams, "gatewayd_outbox_depth") == 0
        assert sample(fams, "gatewayd_outbox_oldest_age_seconds") == 0
        assert sample(fams, "gatewayd_provider_up") == 1 and sample(fams, "gatewayd_healthy") == 1
        # One node alone holds every lease (gatewayd/leadership.py); storage.node_name is the host name.
        for lease in ("tracker", "reports", "outbox", "inbound", "purge", "converter"):
            assert sample(fams, "gatewayd_lease_held", lease=lease) == 1, lease
        assert sample(fams, "gatewayd_lease_held", lease="imap") == 0  # not enabled
        assert sample(fams, "gatewayd_node_info", node=socket.gethostname()) == 1

        # The provider goes away: 503 naming it, after three poll intervals.
        host_port = sim.url.rsplit(":", 1)[1]
        gone_at = time.monotonic()
        await sim.stop()

        async def unhealthy() -> Any:
            code, body = await http_get(ports.http, "/healthz")
            return (code, json.loads(body)) if code == 503 else None

        code, health = await _until(unhealthy, 30, "/healthz 503 with the provider stopped")
        # Not before three poll intervals without a success (the last one came
        # at most one interval before the stop).
        assert health["provider"]["last_success_age"] >= 3 * 1.0, health  # rounded to 0.1 s
        assert time.monotonic() - gone_at >= 2 * 1.0
        assert health["status"] == "unhealthy" and health["provider"]["ok"] is False
        assert any(p.startswith("provider: ") for p in health["problems"]), health["problems"]
        assert all(p.startswith("provider: ") for p in health["problems"]), health["problems"]  # nothing else is wrong
        assert health["store"] == "ok"
        _, text = await http_get(ports.http, "/metrics")
        fams = parse_metrics(text)
        assert sample(fams, "gatewayd_provider_up") == 0 and sample(fams, "gatewayd_healthy") == 0
        assert sample(fams, "gatewayd_provider_errors", "gatewayd_provider_errors_total", kind="unreachable") >= 1

        # It comes back: healthy again.
        await sim.start(port=int(host_port))

        async def healthy() -> Any:
            code, _ = await http_get(ports.http, "/healthz")
            return code == 200

        await _until(healthy, 30, "/healthz 200 once the provider is back")
        assert gw.proc.returncode is None
    finally:
        await sink.stop()
        await sim.stop()


# ------------------------------------------------------------- health timing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Provider:
    def __init__(self) -> None:
        self.last_success_at: float | None = None
        self.last_error_at: float | None = None
        self.last_error: str | None = None
        self.rate_limit_remaining: int | None = None
        self.failing_paths: dict[str, tuple[int, int]] = {}

    def ok(self, at: float) -> None:
        self.last_success_at = at

    def fail(self, at: float, error: str = "connection refused") -> None:
        self.last_error_at, self.last_error = at, error

    async def aclose(self) -> None:
        pass


def _verdict(health: Health, provider: Provider, interval: float = 20.0) -> tuple[bool, list[str]]:
    ok, body = health.check(store_ok=True, provider=provider, poll_interval=interval)
    return ok, body["problems"]


def test_provider_down_only_after_three_poll_intervals() -> None:
    clock = Clock()
    health = Health(clock=clock)
    p = Provider()
    assert _verdict(health, p) == (True, [])  # never called yet
    p.ok(clock.now)
    clock.now += 10
    p.fail(clock.now)  # one failed poll: still fine
    assert _verdict(health, p)[0]
    clock.now = 1000 + 60  # exactly three intervals since the last success
    assert _verdict(health, p)[0]
    clock.now = 1000 + 61
    ok, problems = _verdict(health, p)
    assert not ok and problems == ["provider: no successful call for 61s (last error: connection refused)"]
    p.ok(clock.now)  # one success heals it at once
    assert _verdict(health, p) == (True, [])


def test_provider_never_reached_counts_from_the_first_failure() -> None:
    clock = Clock()
    health = Health(clock=clock)
    p = Provider()
    p.fail(clock.now, "401 invalid_client")
    clock.now += 30
    p.fail(clock.now, "401 invalid_client")
    assert _verdict(health, p, interval=10)[0]
    clock.now += 1  # 31 s after the first failure
    ok, problems = _verdict(health, p, interval=10)
    assert not ok and problems == ["provider: unreachable since start (31s; last error: 401 invalid_client)"]


def test_listener_store_and_stopping_problems() -> None:
    health = Health(clock=Clock())
    health.listener("smtp", True)
    health.listener("imap", False)
    ok, body = health.check(store_ok=False, provider=Provider(), poll_interval=20, stopping=True)
    assert not ok
    assert body["problems"] == ["shutting down", "store: not answering", "listener imap: down"]
    assert body["listeners"] == {"imap": "down", "smtp": "up"}


# ------------------------------------------------- /healthz with a broken store


class BrokenStore:
    dialect = "sqlite"  # the problem then reads "store: not answering" (PostgreSQL names the database)

    def __init__(self, how: str) -> None:
        self.how = how

    async def run(self, fn: Any, *args: Any) -> Any:
        if self.how == "hangs":
            await asyncio.sleep(3600)
        raise RuntimeError("disk I/O error")


async def test_healthz_503_when_the_store_does_not_answer(tmp_path: Path) -> None:
    import gatewayd.http as http_module

    ports = Ports()
    config = load_config(write_config(tmp_path / "c.toml", gateway_config(tmp_path / "state", ports)))
    for how in ("raises", "hangs"):
        rt = Runtime(config=config, store=BrokenStore(how), provider=Provider(), metrics=Metrics(), health=Health())  # type: ignore[arg-type]
        server = HttpServer(rt)
        saved = http_module.STORE_DEADLINE
        http_module.STORE_DEADLINE = 0.5
        await server.start()
        try:
            code, body = await http_get(ports.http, "/healthz")
            assert code == 503, body
            assert json.loads(body)["problems"] == ["store: not answering"]
            code, text = await http_get(ports.http, "/metrics")
            assert code == 200 and sample(parse_metrics(text), "gatewayd_healthy") == 0
        finally:
            http_module.STORE_DEADLINE = saved
            await server.stop()
