"""The web console on a PostgreSQL store: a job's document (PDF download and
preview) comes from the database's row, not from a file of this node
(docs/web.md; docs/operations.md, Database outage). The whole daemon runs
in-process against the provider simulator and a real PostgreSQL 15, all on
127.0.0.1; the console is driven over HTTP as a browser would (login form,
cookies), without the browser."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
from support.ports import free_port
from support.postgres import PgServer
from support.web import EXTENSION, PASSWORDS

from gatewayd.config import load_config_data
from gatewayd.daemon import Daemon
from gatewayd.demo import sample_pdf
from gatewayd.passwords import hash_password
from gatewayd.provider.simulator import run_simulator
from gatewayd.sdnotify import Notifier
from gatewayd.store import NewJob
from gatewayd.web.console import LOGIN_COOKIE


# The console's session and job queries on PostgreSQL (store/web.py) come
# with branch contract (issue 17): strict, so the merge that brings them
# turns this marker into a failure to remove.
async def test_job_document_download_and_preview_on_postgresql(tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    web_port = free_port()
    async with run_simulator() as sim:
        config = load_config_data({
            "provider": {"base_url": sim.base_url, "token_url": sim.token_url, "client_id": "demo", "client_secret": "demo",
                         "extension": EXTENSION},
            "smtp": {"listen": f"127.0.0.1:{free_port()}", "hostname": "gw.test", "domains": ["fax.example.com"],
                     "users": [{"name": "admin@example.com", "password_hash": hash_password(PASSWORDS["admin@example.com"]),
                                "role": "admin"}]},
            "mail": {"relay": "127.0.0.1:9", "from": "Fax Gateway <fax@gw.test>"},
            "storage": {"state_dir": str(tmp_path / "state"), "database_url": pg_url, "database_password": pg_server.password},
            "http": {"listen": ""},
            "web": {"listen": f"127.0.0.1:{web_port}"},
            "log": {"level": "warning", "format": "console"},
        }, env={})
        daemon = Daemon(config, notifier=Notifier(None))
        task = asyncio.create_task(daemon.run())
        try:
            for _ in range(400):
                if task.done():
                    task.result()  # the start failed: say why
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", web_port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            assert daemon.rt is not None
            store = daemon.rt.store
            pdf = sample_pdf()
            # A job as intake stores it (the sender may submit it meanwhile: its document stays).
            ids = await store.run(store.save_and_enqueue, pdf, hashlib.sha256(pdf).hexdigest(), 1,
                                  [NewJob(number="+78123092631", dst_num="78123092631", extension=EXTENSION, report_to="", source="web")])
            job_id = ids[0]
            assert not any((tmp_path / "state" / "documents").rglob("*.pdf"))  # a row, not a file

            base = f"http://127.0.0.1:{web_port}"
            jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
            async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.get(f"{base}/login") as resp:
                    assert resp.status == 200
                csrf = next(c.value for c in jar if c.key == LOGIN_COOKIE)
                form = {"username": "admin@example.com", "password": PASSWORDS["admin@example.com"], "csrf": csrf}
                async with http.post(f"{base}/login", data=form, allow_redirects=False) as resp:
                    assert resp.status in (302, 303), await resp.text()
                async with http.get(f"{base}/jobs/{job_id}/document.pdf") as resp:
                    assert resp.status == 200, await resp.text()
                    assert await resp.read() == pdf
                async with http.get(f"{base}/jobs/{job_id}/preview.png?size=thumb") as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.read()).startswith(b"\x89PNG")
                # Its row gone (retention): 404, said as such.
                await store.run(store.delete_document, (await store.run(store.get_job, job_id)).document)
                async with http.get(f"{base}/jobs/{job_id}/document.pdf") as resp:
                    assert resp.status == 404
                    assert "no longer kept" in await resp.text()
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 15)
