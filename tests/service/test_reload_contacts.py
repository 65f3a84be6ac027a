"""contacts_file is read again on SIGHUP: a new alias faxes at once, a
removed one is refused, and a broken file keeps the running contacts."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from support.service import DOMAIN, NotifySocket, Ports, fax_email, gateway_config, send_fax, to_toml

ALICE = "alice@allowed.test"


async def _hup(gw: Any, notify: NotifySocket) -> str:
    since = time.monotonic()
    gw.signal(signal.SIGHUP)
    reloading = (await notify.wait_for("RELOADING=1", since=since, timeout=10))[0]
    ready = (await notify.wait_for("READY=1", since=reloading.at, timeout=10))[0]
    return ready.fields.get("STATUS", "")


async def test_contacts_file_is_reloaded_on_sighup(tmp_path: Path, notify_socket: NotifySocket, gateways: Any, pdf: bytes) -> None:
    ports = Ports()
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("alias,name,number\nlab,City Lab,+7 812 309-00-01\n", encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text('contacts_file = "contacts.csv"\n' + to_toml(gateway_config(tmp_path / "state", ports, senders=[{"match": ["*@allowed.test"]}])),
                    encoding="utf-8")
    gw = await gateways(path, NOTIFY_SOCKET=notify_socket.address)
    await notify_socket.wait_for("READY=1", timeout=30)

    def fax(alias: str) -> Any:
        rcpt = f"{alias}@{DOMAIN}"
        return send_fax(ports.smtp, ALICE, rcpt, fax_email(ALICE, rcpt, pdf))

    assert (await fax("lab")).startswith("250 2.0.0 queued as")
    assert await fax("clinic") == f"553 5.1.3 <clinic@{DOMAIN}>: not a fax number"

    contacts.write_text("alias,name,number\nclinic,Clinic,+7 495 123-45-67\n", encoding="utf-8")
    status = await _hup(gw, notify_socket)
    assert "reload rejected" not in status, status
    applied = await gw.wait_event("reload_applied")
    assert applied[-1]["changed"] == ["contacts"], applied[-1]
    assert (await fax("clinic")).startswith("250 2.0.0 queued as")
    assert await fax("lab") == f"553 5.1.3 <lab@{DOMAIN}>: not a fax number"

    # A broken file is refused as a whole; the running contacts stay.
    contacts.write_text("alias,name,number\nclinic,Clinic,not-a-number\n", encoding="utf-8")
    status = await _hup(gw, notify_socket)
    assert "reload rejected" in status, status
    assert (await fax("clinic")).startswith("250 2.0.0 queued as")
