#!/usr/bin/env python3
"""Office documents: the warm LibreOffice converter against a cold ``soffice --convert-to``, and the listener while 20 convert.

(1) Per document: the same small DOCX (made at run time by LibreOffice
from a one-paragraph flat ODT) to PDF, N times with gatewayd's warm,
sandboxed converter (``gatewayd/documents/office.py``, one converter) and
N times with a cold ``soffice --headless --convert-to pdf`` (profile
already made, so its best case). Target: warm at least 5x faster (median).

(2) ``gatewayd run`` as shipped (office_concurrency 2, no converter
until the first office document arrives, so the first ones' start-up falls
inside the load; provider held with 429 so nothing is uploaded): 20 DOCX
messages are sent at once (each answered 250 and converted after it), and
for as long as any of those 20 is still converting, 4 sessions send
small-PDF messages; their end of DATA -> 250 times (p50, p99) are compared
with the same load and no conversions. Prints the
figures; exits non-zero only when something does not work.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RCPT,
    SENDER,
    BenchError,
    Gatewayd,
    Simulator,
    dot_stuff,
    fmt_ms,
    hold_provider,
    machine,
    median,
    percentile,
    require,
    run_clients,
    send_one,
    smallest_pdf,
    fax_message,
    summarize_replies,
    verdict,
    workdir,
)

from gatewayd.documents.office import OfficeConverter, OfficeSettings, office_problem  # noqa: E402

_FODT = """<?xml version="1.0" encoding="UTF-8"?>
<office:document xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"
 xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"
 office:mimetype="application/vnd.oasis.opendocument.text">
<office:body><office:text><text:p>Benchmark letter: a page of an ordinary office document.</text:p></office:text></office:body></office:document>
"""


def make_docx(directory: Path, soffice: str) -> tuple[bytes, Path]:
    src = directory / "letter.fodt"
    src.write_text(_FODT, encoding="utf-8")
    profile = directory / "cold-profile"
    subprocess.run([soffice, "--headless", "--norestore", f"-env:UserInstallation=file://{profile}", "--convert-to", "docx",
                    "--outdir", str(directory), str(src)], check=True, capture_output=True, timeout=300)
    return (directory / "letter.docx").read_bytes(), profile


def cold_times(directory: Path, soffice: str, profile: Path, runs: int) -> list[float]:
    times = []
    for n in range(runs):
        out = directory / f"cold{n}"
        started = time.perf_counter()
        subprocess.run([soffice, "--headless", "--norestore", f"-env:UserInstallation=file://{profile}", "--convert-to", "pdf",
                        "--outdir", str(out), str(directory / "letter.docx")], check=True, capture_output=True, timeout=300)
        times.append(time.perf_counter() - started)
        if not (out / "letter.pdf").exists():
            raise BenchError("cold soffice made no PDF")
    return times


async def warm_times(docx: bytes, runs: int) -> tuple[float, list[float]]:
    converter = OfficeConverter(OfficeSettings(concurrency=1))
    try:
        started = time.perf_counter()
        await converter.warm()
        start_up = time.perf_counter() - started
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            pdf = await converter.convert(docx, "docx")
            times.append(time.perf_counter() - started)
            if not pdf.startswith(b"%PDF-"):
                raise BenchError("the warm converter made no PDF")
        return start_up, times
    finally:
        await converter.aclose()


def docx_message(docx: bytes, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RCPT, f"office {n}"
    msg.set_content("\n")
    msg.add_attachment(docx, maintype="application", subtype="vnd.openxmlformats-officedocument.wordprocessingml.document",
                       filename=f"letter{n}.docx")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def converting(state_dir: Path, state: str = "converting") -> int:
    conn = sqlite3.connect(f"file:{state_dir / 'gatewayd.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0])
    finally:
        conn.close()


async def listener_under_conversions(gw: Gatewayd, docx: bytes, small: bytes, messages: int) -> dict[str, object]:
    baseline, _ = await run_clients(gw.port, small, sessions=4, messages=messages)
    started = time.perf_counter()
    office = await asyncio.gather(*(send_one(gw.port, dot_stuff(docx_message(docx, n))) for n in range(20)))
    if not all(r.reply.startswith("250") for r in office):
        raise BenchError(f"office messages not accepted: {summarize_replies(office)}")
    # The load goes on, in batches, for as long as any of the 20 converts.
    during = []
    batches = 0
    while converting(gw.state_dir):
        if time.perf_counter() - started > 600:
            raise BenchError("20 conversions did not end within 10 minutes")
        batch, _ = await run_clients(gw.port, small, sessions=4, messages=20)
        during += batch
        batches += 1
    rejected = converting(gw.state_dir, "rejected")
    if rejected:
        raise BenchError(f"{rejected} office documents were refused (see {gw.workdir / 'gatewayd.log'})")
    return {
        "baseline": baseline, "during": during, "office": office, "batches": batches,
        "twenty_conversions": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="documents per converter (default 5)")
    parser.add_argument("--messages", type=int, default=200, help="small-PDF messages without conversions (default 200)")
    args = parser.parse_args()
    soffice = require("soffice", "libreoffice-writer-nogui")
    problem = office_problem(OfficeSettings())
    if problem:
        raise BenchError(problem)
    print(f"machine: {machine()}")
    with workdir("office") as work:
        docx, profile = make_docx(work, soffice)
        cold = cold_times(work, soffice, profile, args.runs)
        start_up, warm = asyncio.run(warm_times(docx, args.runs * 4))
        ratio = median(cold) / median(warm)
        print(f"(1) DOCX ({len(docx)} bytes) to PDF, median of {len(cold)} cold / {len(warm)} warm:")
        print(f"    cold soffice --convert-to  {fmt_ms(median(cold))} (min {fmt_ms(min(cold))}, max {fmt_ms(max(cold))})")
        print(f"    warm converter             {fmt_ms(median(warm))} (min {fmt_ms(min(warm))}, max {fmt_ms(max(warm))}); "
              f"its start-up once: {fmt_ms(start_up)}")
        print(f"    warm is {ratio:.1f}x faster: target >= 5x {verdict(ratio >= 5)}")
        small = fax_message(smallest_pdf())
        with Simulator() as sim:
            hold_provider(sim)
            with Gatewayd(work / "gw", sim.base_url, {"smtp": {"max_message_size": "25MB"}}) as gw:
                got = asyncio.run(listener_under_conversions(gw, docx, small, args.messages))
        base, during = got["baseline"], got["during"]
        for name, results in (("no conversions", base), ("20 conversions running", during)):
            lat = [r.latency for r in results if r.reply.startswith("250")]  # type: ignore[attr-defined]
            replies = summarize_replies(results)  # type: ignore[arg-type]
            print(f"(2) small-PDF messages, 4 sessions, {name}: replies {replies}, "
                  f"end of DATA -> 250 p50 {fmt_ms(percentile(lat, 50))}, p99 {fmt_ms(percentile(lat, 99))}")
        office_lat = [r.latency for r in got["office"]]  # type: ignore[attr-defined]
        print(f"    the 20 DOCX messages: 250 after p50 {fmt_ms(percentile(office_lat, 50))}, p99 {fmt_ms(percentile(office_lat, 99))}; "
              f"all 20 converted {got['twenty_conversions']:.1f} s after they were sent")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_office: {exc}", file=sys.stderr)
        sys.exit(1)
