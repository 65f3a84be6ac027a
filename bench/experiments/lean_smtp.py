#!/usr/bin/env python3
"""Experiment, not a benchmark target: what does aiosmtpd's session cost?

A deliberately minimal SMTP front end on ``asyncio.Protocol`` (no streams, no
coroutine per command; no STARTTLS, no AUTH, no timeouts, trusted loopback
clients only: NOT product code, gatewayd never uses it) hands each message
to the same ``Intake`` as gatewayd's listener (parse, sender and number
policy, document build, fsync, commit before 250). It runs in 1 and 2
processes (``SO_REUSEPORT``) and ``smtp-source -s 20`` sends 100 KB messages,
next to ``gatewayd run`` with the same processes, in the same run.

    .venv/bin/python bench/experiments/lean_smtp.py [--messages 1500]

docs/performance.md ("The CPU budget at 100 KB") has the figures: the lean
front end was 1.2-1.4x gatewayd, still about 0.7x Postfix, so replacing
aiosmtpd would not meet the 100 KB target.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _common import (  # noqa: E402
    PYTHON, Gatewayd, Simulator, fax_message, free_port, gateway_config, hold_provider, pdf_of_size,
    smtp_source, wait_port, workdir, write_lf_message,
)

from gatewayd.config import load_config_data  # noqa: E402
from gatewayd.daemon import Runtime  # noqa: E402
from gatewayd.email_to_fax.errors import IntakeRefused  # noqa: E402
from gatewayd.email_to_fax.fastdata import _SPECIAL  # noqa: E402
from gatewayd.email_to_fax.intake import Intake  # noqa: E402
from gatewayd.email_to_fax.policy import NumberPolicy, SenderPolicy, split_recipient  # noqa: E402
from gatewayd.health import Health  # noqa: E402
from gatewayd.metrics import Metrics  # noqa: E402
from gatewayd.store import Store  # noqa: E402

TERM = b"\r\n.\r\n"


class Lean(asyncio.Protocol):
    """One session: commands parsed from a buffer, replies written straight to the transport."""

    def __init__(self, app):
        self.app = app
        self.buf = b""
        self.state = "cmd"
        self.data_parts = []
        self.mail_from = None
        self.dests = []
        self.auth = None

    def connection_made(self, transport):
        self.t = transport
        self.peer = transport.get_extra_info("peername")[0]
        transport.write(b"220 gw.bench ESMTP gatewayd\r\n")

    def data_received(self, data):
        if self.state == "data":
            self.feed_data(data)
            return
        if self.state == "busy":
            self.buf += data
            return
        self.buf += data
        self.process()

    def process(self):
        while self.state == "cmd":
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line = self.buf[:i].decode("ascii", "replace")
            self.buf = self.buf[i + 2:]
            self.command(line)
        if self.state == "data" and self.buf:
            data, self.buf = self.buf, b""
            self.feed_data(data)

    def command(self, line):
        verb = line[:4].upper()
        w = self.t.write
        if verb == "EHLO":  # (no STARTTLS, no AUTH: trusted loopback clients only)
            w(b"250-gw.bench\r\n250-SIZE 25000000\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 HELP\r\n")
        elif verb == "HELO":
            w(b"250 gw.bench\r\n")
        elif verb == "MAIL":
            addr = line[10:].strip().strip("<>").split(">")[0]
            try:
                self.auth = self.app.sender.authorise_smtp(envelope_sender=addr, user=None, client_ip=self.peer)
            except IntakeRefused as e:
                w(e.smtp_reply.encode() + b"\r\n"); return
            self.mail_from = addr
            w(b"250 2.1.0 sender ok\r\n")
        elif verb == "RCPT":
            addr = line[8:].strip().strip("<>")
            try:
                local = split_recipient(addr, self.app.config.smtp.domains)
                self.dests.append(self.app.numbers.check(local, addr))
            except IntakeRefused as e:
                w(e.smtp_reply.encode() + b"\r\n"); return
            w(b"250 2.1.5 recipient ok\r\n")
        elif verb == "DATA":
            w(b"354 end data with <CR><LF>.<CR><LF>\r\n")
            self.state = "data"
            self.data_parts = []
            self.tail = b"\r\n"
        elif verb == "QUIT":
            w(b"221 bye\r\n")
            self.t.close()
        elif verb == "RSET":
            self.mail_from = None; self.dests = []
            w(b"250 ok\r\n")
        else:
            w(b"500 what\r\n")

    def feed_data(self, data):
        joined = self.tail + data
        k = joined.find(TERM)
        if k < 0:
            self.data_parts.append(data)
            self.tail = joined[-4:]
            return
        # the message ends at k (in joined coords)
        self.data_parts.append(data)
        whole = b"".join(self.data_parts)
        # position of the terminator in whole: len(whole) - (len(joined) - k)
        end = len(whole) - (len(joined) - k)
        body = whole[:end]
        rest = whole[end + len(TERM):]
        if _SPECIAL.search(b"\r\n" + body, 1) is not None:
            body = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
        self.state = "busy"
        self.buf = rest
        asyncio.ensure_future(self.finish(body + b"\r\n"))

    async def finish(self, raw):
        try:
            ids = await self.app.intake.accept(raw, authorisation=self.auth, destinations=list(self.dests), source="smtp",
                                               report_to=self.auth.report_to, crlf_checked=True)
            reply = "250 2.0.0 queued as " + " ".join(map(str, ids))
        except IntakeRefused as e:
            reply = e.smtp_reply
        self.t.write(reply.encode() + b"\r\n")
        self.mail_from = None; self.dests = []
        self.state = "cmd"
        self.process()


class App:
    pass


async def serve(config, port):
    from gatewayd.logs import setup_logging
    setup_logging("warning", "json")
    app = App()
    app.config = config
    app.store = Store(config.state_dir)
    app.rt = Runtime(config=config, store=app.store, provider=None, metrics=Metrics(), health=Health())
    app.rt.wake = lambda name: None
    app.intake = Intake(app.rt)
    app.sender = SenderPolicy(config)
    app.numbers = NumberPolicy(config.numbers)
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Lean(app), "127.0.0.1", port, reuse_port=True)
    await asyncio.Event().wait()



def serve_main(state: Path, port: int) -> None:
    data = gateway_config(state, smtp_port=port, base_url="http://127.0.0.1:9/api/v2")
    asyncio.run(serve(load_config_data(data, env={}), port))


def lean_rate(root: Path, msg_file: Path, processes: int, messages: int) -> float:
    port = free_port()
    state = root / f"lean-{processes}"
    procs = [subprocess.Popen([PYTHON, __file__, "--serve", str(state), str(port)])]
    try:
        wait_port(port, 60, procs[0])  # the first one creates the store
        procs += [subprocess.Popen([PYTHON, __file__, "--serve", str(state), str(port)]) for _ in range(processes - 1)]
        time.sleep(3.0)  # the others are listening too
        smtp_source(port, msg_file, sessions=20, messages=40)
        elapsed = smtp_source(port, msg_file, sessions=20, messages=messages)
        conn = sqlite3.connect(str(state / "gatewayd.sqlite3"))
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        conn.close()
        if jobs != messages + 40:
            raise SystemExit(f"lean front end: {jobs} jobs for {messages + 40} messages")
        return messages / elapsed
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_main(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1500)
    args = parser.parse_args()
    with workdir("lean") as root, Simulator() as sim:
        hold_provider(sim)
        msg_file = write_lf_message(fax_message(pdf_of_size(100_000, seed=100_001)), root / "m.eml")
        for processes in (1, 2):
            with Gatewayd(root / f"gw-{processes}", sim.base_url, overrides={"smtp": {"processes": processes}}) as gw:
                smtp_source(gw.port, msg_file, sessions=20, messages=40)
                reference = args.messages / smtp_source(gw.port, msg_file, sessions=20, messages=args.messages)
            lean = lean_rate(root, msg_file, processes, args.messages)
            print(f"{processes} process(es), 100 KB: gatewayd (aiosmtpd) {reference:.1f} msgs/s, "
                  f"lean front end {lean:.1f} msgs/s ({lean / reference:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
