"""Office and text documents become fax pages through a real, sandboxed LibreOffice (docs/documents.md, Office documents).

Slow (LibreOffice starts once per test): every document here is small.
"""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
from support.e2f import PYTHON, REPO, RawSMTP, clean_env, load, wait_for, write_config
from support.office import WORDS, _sent, message, pdftotext, run_office_gateway

from gatewayd.email_to_fax.report import report_body
from gatewayd.store import CONVERTING, QUEUED, REJECTED

# LibreOffice starts per test, and the documents are made by a cold soffice once.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


async def test_each_office_kind_arrives_as_a_pdf_with_its_text(tmp_path: Path, sim, sim_data, documents) -> None:
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        ids: dict[str, int] = {}
        try:
            for kind in WORDS:
                _, _, reply = await client.send(message([(f"letter.{kind}", documents[kind])], subject=f"office {kind}"))
                assert reply.startswith("250 2.0.0 queued as"), (kind, reply)
                ids[kind] = int(reply.rsplit(" ", 1)[-1])
        finally:
            await client.close()
        # 250 came before any conversion: the job shows "converting" first.
        first = gw.store.job_events(ids["docx"])[0]
        assert first.to_state == CONVERTING
        faxes = await _sent(sim, gw, list(ids.values()), timeout=180)
        for (kind, job_id), fax in zip(ids.items(), faxes):
            assert fax.document.startswith(b"%PDF-")
            text = pdftotext(fax.document, tmp_path, f"{kind}.pdf")
            assert WORDS[kind] in " ".join(text.split()), (kind, text)
            states = [e.to_state for e in gw.store.job_events(job_id)]
            assert states[:2] == [CONVERTING, QUEUED], states
        # The originals are gone once converted (nothing kept by accident).
        assert not list((config.state_dir / "documents").rglob("*.part"))


async def test_office_documents_and_pdfs_keep_their_order(tmp_path: Path, sim, sim_data, documents) -> None:
    from gatewayd.documents.cover import CoverPage, render_cover  # any small real PDF

    pdf = render_cover(CoverPage("a", "b", "c", "Subject penguin page", ""), page_size="A4", attachment_pages=1)
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(message([("a.txt", documents["txt"]), ("b.pdf", pdf), ("c.rtf", documents["rtf"])], subject="mixed"))
        finally:
            await client.close()
        assert reply.startswith("250"), reply
        job_id = int(reply.rsplit(" ", 1)[-1])
        (fax,) = await _sent(sim, gw, [job_id])
        text = " ".join(pdftotext(fax.document, tmp_path).split())
        assert text.index(WORDS["txt"]) < text.index("penguin") < text.index(WORDS["rtf"]), text
        assert gw.store.get_job(job_id).pages == 3


class _Listener:
    """A local HTTP-ish listener on 127.0.0.1 that records every connection it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _odt_with_linked_image(url: str, words: str) -> bytes:
    content = f"""<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"
 xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" office:version="1.2">
<office:body><office:text><text:p>{words}</text:p>
<text:p><draw:frame draw:name="img" svg:width="5cm" svg:height="5cm" text:anchor-type="paragraph">
<draw:image xlink:href="{url}" xlink:type="simple" xlink:show="embed" xlink:actuate="onLoad"/></draw:frame></text:p>
<text:p><draw:frame draw:name="ole" svg:width="5cm" svg:height="5cm" text:anchor-type="paragraph">
<draw:object xlink:href="{url}/object" xlink:type="simple" xlink:show="embed" xlink:actuate="onLoad"/></draw:frame></text:p>
</office:text></office:body></office:document-content>"""
    manifest = """<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">
<manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.text"/>
<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>
</manifest:manifest>"""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), "application/vnd.oasis.opendocument.text")
        zf.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


async def test_linked_remote_content_is_never_fetched(tmp_path: Path, sim, sim_data) -> None:
    listener = _Listener()
    url = f"http://127.0.0.1:{listener.port}/logo.png"
    html = (f"<!DOCTYPE html><html><body><p>Html linked heron</p><img src=\"{url}\">"
            f"<link rel=\"stylesheet\" href=\"{url}/style.css\"></body></html>").encode()
    odt = _odt_with_linked_image(url, "Odt linked heron")
    config = load(tmp_path, sim_data)
    try:
        async with run_office_gateway(config, sim=sim) as (gw, _converter):
            client = await RawSMTP.connect(gw.port)
            try:
                _, _, first = await client.send(message([("page.html", html)], subject="linked html"))
                _, _, second = await client.send(message([("doc.odt", odt)], subject="linked odt"))
            finally:
                await client.close()
            ids = [int(first.rsplit(" ", 1)[-1]), int(second.rsplit(" ", 1)[-1])]
            faxes = await _sent(sim, gw, ids)
            for fax, words in zip(faxes, ("Html linked heron", "Odt linked heron")):
                assert words in " ".join(pdftotext(fax.document, tmp_path).split())
        await asyncio.sleep(0.5)  # anything late would still be seen
        assert listener.connections == 0
    finally:
        listener.close()


async def test_a_document_over_the_time_limit_is_refused_and_the_next_converts(tmp_path: Path, sim, sim_data, documents) -> None:
    sim_data["documents"]["convert_timeout"] = "1s"
    # Thousands of pages of text: LibreOffice needs far more than a second for it.
    slow = ("".join(f"line {n} of a very long memo that keeps LibreOffice busy\n" for n in range(120_000))).encode()
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, first = await client.send(message([("huge.txt", slow)], subject="slow one"))
            assert first.startswith("250"), first
            slow_id = int(first.rsplit(" ", 1)[-1])
            await wait_for(lambda: gw.store.get_job(slow_id).state == REJECTED, timeout=120, what="slow document refused")
            _, _, second = await client.send(message([("next.rtf", documents["rtf"])], subject="next one"))
        finally:
            await client.close()
        job = gw.store.get_job(slow_id)
        assert job.reason == "huge.txt: conversion took longer than 1 seconds", job.reason
        body = report_body(job, gw.store.job_events(slow_id))
        assert "huge.txt: conversion took longer than 1 seconds" in body, body
        next_id = int(second.rsplit(" ", 1)[-1])
        (fax,) = await _sent(sim, gw, [next_id])
        assert WORDS["rtf"] in " ".join(pdftotext(fax.document, tmp_path).split())


async def test_office_off_refuses_as_unsupported(tmp_path: Path, sim, sim_data, documents) -> None:
    sim_data["documents"]["office"] = False
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(message([("letter.docx", documents["docx"])], subject="off"))
        finally:
            await client.close()
        assert gw.jobs() == []
    assert reply.startswith("554 5.6.0"), reply
    assert "letter.docx: unsupported type" in reply, reply


def test_check_config_says_when_libreoffice_is_missing(tmp_path: Path, sim_data) -> None:
    path = write_config(tmp_path / "config.toml", sim_data)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    out = subprocess.run([PYTHON, "-m", "gatewayd", "-c", str(path), "check-config"], capture_output=True, text=True,
                         env=clean_env(PATH=str(empty)), cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "office      NOT AVAILABLE: LibreOffice (soffice) is not installed" in out.stdout, out.stdout
    ok = subprocess.run([PYTHON, "-m", "gatewayd", "-c", str(path), "check-config"], capture_output=True, text=True,
                        env=clean_env(), cwd=REPO, timeout=60)
    assert "office      LibreOffice, 2 at once" in ok.stdout, ok.stdout
