"""docs/operations.md's example of ``gatewayd jobs`` and ``gatewayd job ID``
(between the ``job-history`` markers) is what the commands print.

Issue 21, item 10: the example showed ``submitted -> sending``, which a
status poll rarely sees. Here a fax goes through a real ``gatewayd run`` to
the provider simulator, which fails it, and the real ``gatewayd jobs`` and
``gatewayd job ID`` are run against the daemon's state: the example's lines
must have the same shape and the same state sequence and reasons
(timestamps and ids aside). Only loopback addresses.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.deploy import REPO, doc_block
from support.process import PYTHON, GatewayProcess, clean_env, start_gateway
from support.reliability import DOMAIN, config_data, free_port, smtp_send, wait_until
from support.service import fax_email

from gatewayd.provider.simulator import ProviderSimulator

OPERATIONS = REPO / "docs" / "operations.md"
NUMBER = "+78123092631"
SENDER = "alice@example.com"
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture
async def failed_fax(tmp_path: Path) -> AsyncIterator[tuple[Path, int]]:
    """(config, job id) of a fax the provider failed once, its automatic retry pending."""
    from gatewayd.demo import sample_pdf

    sim = ProviderSimulator(send_delays=(0.05, 0.05))
    await sim.start()
    sim.set_outcome(NUMBER.lstrip("+"), ["failed", "failed", "failed"])
    daemon: GatewayProcess | None = None
    try:
        # The documented defaults for the retry (docs/configuration.md:
        # auto_retries 2, retry_delay 5m); a short status poll for the test.
        data = config_data(tmp_path / "state", sim=sim, smtp_port=free_port(),
                           provider={"retry_delay": "5m", "status_poll_interval": "1s"})
        daemon = await start_gateway(tmp_path, data)
        reply = await smtp_send(daemon.port or 0, fax_email(SENDER, f"{NUMBER}@{DOMAIN}", sample_pdf(), subject="Contract"),
                                rcpt=[f"{NUMBER}@{DOMAIN}"])
        m = re.match(r"250 2\.0\.0 queued as (\d+)$", reply)
        assert m, reply
        job_id = int(m.group(1))
        config = tmp_path / "gatewayd.toml"
        await wait_until(lambda: "submitted -> failed" in gatewayd("job", str(job_id), "-c", str(config)), 60,
                         "the provider's failure in the job's history")
        yield config, job_id
    finally:
        if daemon is not None:
            await daemon.stop()
        await sim.stop()


def gatewayd(*args: str) -> str:
    proc = subprocess.run([PYTHON, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def documented() -> dict[str, list[str]]:
    """The example's output lines by command (``jobs``, ``job``)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in doc_block("job-history", OPERATIONS).splitlines():
        if line.startswith("$ gatewayd "):
            current = line.split()[2]
            out[current] = []
        else:
            assert current is not None, line
            out[current].append(line)
    assert set(out) == {"jobs", "job"}, out.keys()
    return out


def history(lines: list[str]) -> list[str]:
    """The history rows without their timestamps ("..." rows dropped), fax ids as N."""
    rows = lines[lines.index("history:") + 1:]
    return [re.sub(r"\bfax \d+\b", "fax N", STAMP.sub("T", row)) for row in rows if row.strip() != "..."]


def fields(lines: list[str]) -> list[str]:
    return [line.split(":", 1)[0] for line in lines[: lines.index("history:")] if line != "..."]


async def test_the_documented_history_is_what_gatewayd_job_prints(failed_fax: tuple[Path, int]) -> None:
    config, job_id = failed_fax
    doc = documented()
    real = gatewayd("job", str(job_id), "-c", str(config)).splitlines()

    # Same rows in the same order and layout: the documented ones (up to
    # "...") are the real ones' start.
    assert history(doc["job"]) == history(real)[: len(history(doc["job"]))], "\n".join(real)
    shown = fields(doc["job"])
    assert fields(real)[: len(shown)] == shown, "\n".join(real)
    assert "submitted -> sending" not in "\n".join(doc["job"])

    # The documented values of the fields the test controls.
    values = dict(line.split(":", 1) for line in real[: real.index("history:")])
    for line in doc["job"][: doc["job"].index("history:")]:
        key, _, value = line.partition(":")
        if key in ("number", "extension", "from", "source", "subject"):
            assert values[key].strip() == value.strip(), (key, "\n".join(real))

    # `gatewayd jobs`: the same header, and a row with the same columns.
    listing = gatewayd("jobs", "--state", "failed", "--limit", "5", "-c", str(config)).splitlines()
    # Below the jobs, after a blank line: the running daemon's leases (gatewayd/leadership.py).
    listing, leases = listing[: listing.index("")], listing[listing.index("") + 1:]
    assert leases[0].split() == ["LEASE", "NODE", "UNTIL"] and "tracker" in [row.split()[0] for row in leases[1:]], leases
    assert listing[0] == doc["jobs"][0], listing
    assert len(listing) == 2 and len(listing[1].split()) == len(doc["jobs"][1].split()), listing


def test_the_example_history_is_marked() -> None:
    rows: list[Any] = history(documented()["job"])
    assert rows and all(" -> " in row for row in rows), rows
