"""Helpers for the office-document tests: documents made at test time, a gateway with the converter service, MIME messages."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from support.gateway import in_process
from support.e2f import wait_for, DOMAIN, FAST_SENDER, NUMBER_1, SENDER, Gateway, require_tool

from gatewayd.config import Config
from gatewayd.email_to_fax.converter import ConverterService
from gatewayd.email_to_fax.sender import Sender
from gatewayd.provider.client import ProviderClient

# The words each document carries; pdftotext of the fax must show them.
WORDS = {
    "docx": "Docx quarterly zebra report",
    "odt": "Odt lighthouse keeper notes",
    "xlsx": "Xlsx walrus inventory",
    "rtf": "Rtf pelican agreement",
    "txt": "Plain quokka memo",
    "html": "Html narwhal bulletin",
}

_FODT = """<?xml version="1.0" encoding="UTF-8"?>
<office:document xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"
 office:mimetype="application/vnd.oasis.opendocument.text">
<office:body><office:text><text:p>{words}</text:p></office:text></office:body></office:document>
"""


def soffice_convert(src: Path, target: str, outdir: Path) -> Path:
    """A cold ``soffice --convert-to`` (the documents' own maker, not the code under test)."""
    soffice = require_tool("soffice")
    profile = outdir / "profile"
    subprocess.run([soffice, "--headless", "--norestore", f"-env:UserInstallation=file://{profile}",
                    "--convert-to", target, "--outdir", str(outdir), str(src)],
                   check=True, capture_output=True, timeout=180)
    out = outdir / f"{src.stem}.{target.split(':')[0]}"
    assert out.exists(), f"soffice made no {out.name}"
    return out


def make_text_document(directory: Path, kind: str, words: str) -> bytes:
    """A one-paragraph ``kind`` (docx, odt, ...) holding ``words``, made by a cold soffice."""
    src = directory / f"{kind}-source.fodt"
    src.write_text(_FODT.format(words=words), encoding="utf-8")
    return soffice_convert(src, kind, directory).read_bytes()


def make_documents(directory: Path) -> dict[str, bytes]:
    docs: dict[str, bytes] = {}
    for kind in ("docx", "odt"):
        docs[kind] = make_text_document(directory, kind, WORDS[kind])
    csv = directory / "sheet.csv"
    csv.write_text(f"item,count\n{WORDS['xlsx']},7\n", encoding="utf-8")
    docs["xlsx"] = soffice_convert(csv, "xlsx", directory).read_bytes()
    docs["rtf"] = ("{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Times New Roman;}}\\f0\\fs24 " + WORDS["rtf"] + "\\par}").encode("ascii")
    docs["txt"] = (WORDS["txt"] + "\nsecond line\n").encode("utf-8")
    docs["html"] = f"<!DOCTYPE html><html><head><title>t</title></head><body><h1>{WORDS['html']}</h1></body></html>".encode()
    return docs


_TYPES = {
    "docx": ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document"),
    "xlsx": ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "odt": ("application", "vnd.oasis.opendocument.text"),
    "rtf": ("application", "rtf"),
    "txt": ("text", "plain"),
    "html": ("text", "html"),
    "pdf": ("application", "pdf"),
}


def message(attachments: list[tuple[str, bytes]], *, subject: str = "documents", body: str = "") -> bytes:
    """A message with ``attachments`` (file name, bytes), in order; CRLF line endings."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = f"{NUMBER_1}@{DOMAIN}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg.set_content(body or "\n")
    for name, data in attachments:
        maintype, subtype = _TYPES.get(name.rsplit(".", 1)[-1], ("application", "octet-stream"))
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def pdftotext(pdf: bytes, tmp_path: Path, name: str = "fax.pdf") -> str:
    path = tmp_path / name
    path.write_bytes(pdf)
    out = subprocess.run([require_tool("pdftotext"), "-layout", str(path), "-"], check=True, capture_output=True, timeout=60)
    return out.stdout.decode("utf-8", "replace")


@contextlib.asynccontextmanager
async def run_office_gateway(config: Config, *, sim: Any) -> AsyncIterator[tuple[Gateway, ConverterService]]:
    """The SMTP listener, converter service and sender as build_services wires them
    (support.gateway.in_process), with a sender that polls fast."""

    def provider(config: Config, metrics: Any) -> ProviderClient:
        return ProviderClient(sim.base_url, sim.token_url, "demo", "demo", timeout=5.0, on_request=metrics.observe_provider_request)

    async with in_process(config, only={"smtp", "sender", "converter"}, replace={"sender": lambda rt: Sender(rt, FAST_SENDER)},
                          provider=provider, check=False) as gw:
        yield Gateway(gw), gw.service("converter")


async def _sent(sim, gw, job_ids, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    """Wait until the simulator has a fax for each job; returns them in job order."""
    await wait_for(lambda: len(_faxes_for(sim, gw, job_ids)) == len(job_ids), timeout=timeout, what=f"faxes of jobs {job_ids}")
    by_name = {f.filename: f for f in _faxes_for(sim, gw, job_ids)}
    return [by_name[f"fax-{i}.pdf"] for i in job_ids]


def _faxes_for(sim, gw, job_ids):  # type: ignore[no-untyped-def]
    names = {f"fax-{i}.pdf" for i in job_ids}
    return [f for f in sim.sent_faxes() if f.filename in names]
