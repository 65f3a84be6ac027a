"""`gatewayd mailto` and `gatewayd received` as real subprocesses.

The simulator runs in the test's event loop, so the commands are started
with asyncio's subprocess API (a blocking call would stall the simulator).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from support.inbound import REPO, config_data, to_toml


async def gatewayd(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def write_config(path: Path, sim, sink, tmp_path: Path, **sections) -> str:
    path.write_text(to_toml(config_data(sim, sink, tmp_path / "state", **sections)))
    return str(path)


async def test_mailto_set_and_show(sim, sink, tmp_path):
    cfg = write_config(tmp_path / "gw.toml", sim, sink, tmp_path)
    code, out, err = await gatewayd("mailto", "122", "--set", "a@x.test,b@y.test", "-c", cfg)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["a@x.test", "b@y.test"]
    assert sim.extensions[122].fax_mailto == "a@x.test,b@y.test"
    assert sim.count_requests("PUT", "/extension/122/fax/") == 1

    code, out, err = await gatewayd("-c", cfg, "mailto", "122")
    assert code == 0 and out.splitlines() == ["a@x.test", "b@y.test"]
    # As the provider returns them: whatever it stores, in its order.
    sim.extensions[123].fax_mailto = "z@x.test, y@x.test"
    code, out, _ = await gatewayd("mailto", "123", "-c", cfg)
    assert code == 0 and out.splitlines() == ["z@x.test", "y@x.test"]
    # An empty list clears it.
    code, out, err = await gatewayd("mailto", "123", "--set", "", "-c", cfg)
    assert (code, out) == (0, "") and "no fax_mailto" in err
    assert sim.extensions[123].fax_mailto is None


async def test_mailto_refuses_an_invalid_address_before_any_request(sim, sink, tmp_path):
    cfg = write_config(tmp_path / "gw.toml", sim, sink, tmp_path)
    before = sim.extensions[122].fax_mailto
    for bad in ("a@x.test,not-an-address", "a@x.test,,b@y.test", "a@x.test,b@y.test\nBcc: c@z.test"):
        code, out, err = await gatewayd("mailto", "122", "--set", bad, "-c", cfg)
        assert code == 2, (bad, err)
        assert out == ""
        assert "address" in err
    code, out, err = await gatewayd("mailto", "122", "--set", "a@x.test,not-an-address", "-c", cfg)
    assert "'not-an-address'" in err
    assert sim.count_requests("PUT") == 0
    assert sim.request_log == []  # not even a token was asked for
    assert sim.extensions[122].fax_mailto == before


async def test_mailto_provider_errors_exit_1_with_a_clear_message(sim, sink, tmp_path):
    cfg = write_config(tmp_path / "gw.toml", sim, sink, tmp_path)
    code, out, err = await gatewayd("mailto", "999", "-c", cfg)
    assert code == 1 and "extension 999" in err and "Traceback" not in err
    bad = write_config(tmp_path / "bad.toml", sim, sink, tmp_path, provider={"client_secret": "wrong"})
    code, out, err = await gatewayd("mailto", "122", "-c", bad)
    assert code == 1 and "credentials" in err and "wrong" not in err and "Traceback" not in err
    sim.fail_next(20, "/extension/122/fax/", status=503)
    code, out, err = await gatewayd("mailto", "122", "--set", "a@x.test", "-c", cfg, timeout=60)
    assert code == 1 and "provider error" in err and "Traceback" not in err


async def test_received_lists_relayed_queued_and_held(sim, sink, make_harness, tmp_path, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    relayed = sim.inject_received(122, faxes["pdf"].data, caller_id="74950000001", destination="78120000001")
    held = sim.inject_received(123, faxes["pdf"].data, caller_id="74950000002", destination="78120000002")
    h = await make_harness()
    await h.cycle()
    sink.fail_data_with = "451 4.3.0 later"
    queued = sim.inject_received(122, faxes["g4"].data, caller_id="74950000003")
    await h.cycle()
    await h.close()

    cfg = write_config(tmp_path / "gw.toml", sim, sink, tmp_path)
    code, out, err = await gatewayd("received", "-c", cfg)
    assert code == 0, err
    lines = {line.split()[2]: line for line in out.splitlines()[1:]}  # by uuid (after date and time)
    assert "relayed" in lines[relayed] and "alice@x.test" in lines[relayed] and "74950000001" in lines[relayed]
    assert "held" in lines[held] and "no recipient" in lines[held]
    assert "retrying" in lines[queued] and "alice@x.test" in lines[queued]
    code, out, _ = await gatewayd("received", "--limit", "1", "-c", cfg)
    assert code == 0 and len(out.splitlines()) == 2
