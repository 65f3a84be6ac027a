"""The real daemon starts no LibreOffice until an office document arrives,
and a converted message gets a cover page per recipient like any other:
the attachments stored once, each job's cover apart (docs/documents.md,
Office documents and Cover page)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from support.corpus import good_message, make_pdf
from support.e2f import DOMAIN, NUMBER_1, NUMBER_2, PYTHON, REPO, RawSMTP, clean_env, config_data, free_port, load, merge, wait_for, write_config
from support.office import WORDS, pdftotext, run_office_gateway

from gatewayd.store import CONVERTING, QUEUED, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (by parent id, read from /proc), however deep."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _soffices(pid: int) -> list[int]:
    """The daemon's descendants that are LibreOffice (soffice, soffice.bin)."""
    out = []
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"soffice" in cmdline and b"uno_worker" not in cmdline:
            out.append(child)
    return out


async def test_the_daemon_starts_no_soffice_until_an_office_document_arrives(tmp_path: Path, sim, documents) -> None:
    port = free_port()
    state = tmp_path / "state"
    data = merge(config_data(state, base_url=sim.base_url, token_url=sim.token_url, smtp_port=port),
                 {"documents": {"cover_page": "never"}})
    config = write_config(tmp_path / "config.toml", data)
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gatewayd", "run", "-c", str(config), cwd=REPO, env=clean_env(),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )
    try:
        async def greets() -> bool:
            assert proc.returncode is None, log.read_text()[-3000:]
            try:
                client = await RawSMTP.connect(port, ehlo=False)
            except OSError:
                return False
            await client.close()
            return client.greeting.startswith("220 ")

        await wait_for(greets, timeout=60, interval=0.1, what="the daemon to listen")
        # Listening, every service running, a PDF sent and faxed: still no LibreOffice.
        client = await RawSMTP.connect(port)
        try:
            _, _, reply = await client.send(good_message([("a.pdf", "application/pdf", make_pdf(1, text="plain pdf"))]))
            assert reply.startswith("250"), reply
            await wait_for(lambda: len(sim.sent_faxes()) == 1, timeout=60, what="the PDF fax")
            assert _soffices(proc.pid) == [], "soffice started before any office document"
            _, _, reply = await client.send(good_message([("letter.docx", "application/octet-stream", documents["docx"])],
                                                         subject="office"))
            assert reply.startswith("250"), reply
        finally:
            await client.close()
        job_id = int(reply.rsplit(" ", 1)[-1])
        # The first office document starts one.
        await wait_for(lambda: bool(_soffices(proc.pid)), timeout=120, what="a soffice for the first office document")
        await wait_for(lambda: len(sim.sent_faxes()) == 2, timeout=180, what="the converted fax")
        store = Store(state)
        try:
            assert store.get_job(job_id).state != CONVERTING
        finally:
            store.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_converted_message_gets_a_cover_per_recipient_and_its_attachments_once(tmp_path: Path, sim, sim_data, documents) -> None:
    sim_data["documents"]["cover_page"] = "always"
    raw = good_message([("letter.docx", "application/octet-stream", documents["docx"])], subject="Converted with covers",
                       to_addrs=(f"Anna Smith <{NUMBER_1}@{DOMAIN}>", f"Boris Ivanov <{NUMBER_2}@{DOMAIN}>"))
    async with run_office_gateway(load(tmp_path, sim_data), sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(raw, recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}"))
        finally:
            await client.close()
        assert reply.startswith("250"), reply
        ids = [j.id for j in gw.jobs()]
        assert len(ids) == 2
        await wait_for(lambda: all(gw.store.get_job(i).state != CONVERTING for i in ids), timeout=180, what="converted")
        jobs = [gw.store.get_job(i) for i in ids]
        # The attachments once, each recipient's cover apart, both written before the move to queued.
        assert len({j.document for j in jobs}) == 1 and all(j.document for j in jobs)
        assert len({j.cover for j in jobs}) == 2 and all(j.cover for j in jobs)
        assert [e.to_state for e in gw.store.job_events(ids[0])][:2] == [CONVERTING, QUEUED]
        for job in jobs:
            assert gw.store.document_path(job.document).exists() and gw.store.document_path(job.cover).exists()
        await wait_for(lambda: len(sim.sent_faxes()) == 2, timeout=120, what="both faxes")
    faxes = {f.dst_num: f for f in sim.sent_faxes()}
    for number, name, other_number, other_name in ((NUMBER_1, "Anna Smith", NUMBER_2, "Boris Ivanov"),
                                                   (NUMBER_2, "Boris Ivanov", NUMBER_1, "Anna Smith")):
        text = pdftotext(faxes[number[1:]].document, tmp_path)
        cover = text.split("\f")[0]
        assert number in cover and name in cover, cover
        assert other_number not in cover and other_name not in cover, cover
        assert WORDS["docx"] in " ".join(text.split()), text
