"""``gatewayd send`` with office documents, as a real process (docs/documents.md, Office documents):
queued as from email and converted by the daemon's converter; refused with the email path's words
where office conversion is off or LibreOffice is missing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.corpus import make_pdf
from support.e2f import NUMBER_1, PYTHON, REPO, RawSMTP, clean_env, load, write_config
from support.office import WORDS, _sent, message, pdftotext, run_office_gateway

from gatewayd.store import CONVERTING, QUEUED, Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


async def gatewayd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(PYTHON, "-m", "gatewayd", *args, cwd=REPO, env=env or clean_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_send_queues_a_docx_that_the_converter_converts(tmp_path: Path, sim, sim_data, documents) -> None:
    cfg = write_config(tmp_path / "config.toml", sim_data)
    Store(tmp_path / "state").close()  # the daemon has run once
    docx = tmp_path / "letter.docx"
    docx.write_bytes(documents["docx"])
    notes = tmp_path / "notes.txt"  # text: no magic number, taken by its extension as from email
    notes.write_bytes(documents["txt"])
    rc, out, err = await gatewayd("send", NUMBER_1, str(docx), str(notes), "-c", str(cfg))
    assert (rc, err) == (0, ""), err
    job_id = int(out.strip().removeprefix("queued as "))
    store = Store(tmp_path / "state")
    try:
        # Stored as it came, for the daemon: the CLI started no LibreOffice.
        job = store.get_job(job_id)
        assert (job.state, job.source, job.document) == (CONVERTING, "cli", "")
    finally:
        store.close()
    # The daemon's converter finds it at its start (as it would at its next look).
    async with run_office_gateway(load(tmp_path, sim_data), sim=sim) as (gw, _converter):
        (fax,) = await _sent(sim, gw, [job_id], timeout=180)
        states = [e.to_state for e in gw.store.job_events(job_id)]
        pages = gw.store.get_job(job_id).pages
    assert states[:2] == [CONVERTING, QUEUED], states
    assert fax.document.startswith(b"%PDF-")
    text = " ".join(pdftotext(fax.document, tmp_path).split())
    assert text.index(WORDS["docx"]) < text.index(WORDS["txt"]), text
    assert pages == 2
    assert not list((tmp_path / "state" / "documents").rglob("*.part"))  # the originals are gone


async def test_send_refuses_office_documents_where_they_are_not_converted(tmp_path: Path, sim, sim_data, documents) -> None:
    Store(tmp_path / "state").close()
    docx = tmp_path / "letter.docx"
    docx.write_bytes(documents["docx"])
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make_pdf(1))
    # The email path's words, from a gateway with office documents off.
    sim_data["documents"]["office"] = False
    off = str(write_config(tmp_path / "off.toml", sim_data))
    async with run_office_gateway(load(tmp_path, sim_data), sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(message([("letter.docx", documents["docx"])], subject="off"))
        finally:
            await client.close()
    words = f"no fax document: no attachment of a supported type (letter.docx: unsupported type {DOCX_TYPE})"
    assert reply == f"554 5.6.0 {words}", reply

    rc, out, err = await gatewayd("send", NUMBER_1, str(docx), "-c", off)
    assert (rc, out, err) == (1, "", f"gatewayd send: {words}\n")
    # With a PDF beside it the PDF is not faxed alone: the file the user chose is named.
    rc, out, err = await gatewayd("send", NUMBER_1, str(pdf), str(docx), "-c", off)
    assert (rc, out, err) == (1, "", f"gatewayd send: letter.docx: unsupported type {DOCX_TYPE}\n")

    # documents.office on, but no LibreOffice on this machine: the same words.
    sim_data["documents"]["office"] = True
    on = str(write_config(tmp_path / "on.toml", sim_data))
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    rc, out, err = await gatewayd("send", NUMBER_1, str(docx), "-c", on, env=clean_env(PATH=str(empty)))
    assert (rc, out, err) == (1, "", f"gatewayd send: {words}\n")

    store = Store(tmp_path / "state")
    try:
        assert store.list_jobs() == []  # nothing queued by any refusal
    finally:
        store.close()
