"""``gatewayd demo``: the whole product on loopback, with nothing configured.

It starts the provider simulator, the gateway and a mail sink that writes
every email as a file in a Maildir, sends a sample fax through the SMTP
listener over a real socket, receives a sample fax from the simulator, and
narrates each step. Then it keeps running so you can send your own.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import shutil
import socket
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TextIO

from fpdf import FPDF
from PIL import Image, ImageDraw
from tomli_w import dumps as to_toml

from gatewayd.commands.common import CommandError
from gatewayd.config import Config, load_config, load_config_data
from gatewayd.daemon import Daemon
from gatewayd.logs import setup_logging
from gatewayd.mailsink import MailSink, SunkMail
from gatewayd.passwords import hash_password
from gatewayd.provider.simulator import run_simulator
from gatewayd.sdnotify import Notifier

FAX_DOMAIN = "fax.example.com"
SAMPLE_NUMBER = "+7-812-309-26-31"
SAMPLE_SENDER = "you@example.com"
RECEPTION = "reception@example.com"
EXTENSION = 122


class DemoError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


WEB_PORT = 8465  # the console's documented port; another free one when it is taken
WEB_USER = "admin@example.com"


def demo_settings(*, state_dir: Path, smtp_port: int, http_port: int, sim: Any, relay: str,
                  web_port: int = WEB_PORT, web_password_hash: str = "") -> dict[str, Any]:
    """The demo's configuration, as the TOML file it writes holds it."""
    return {
        "provider": {
            "base_url": sim.base_url,
            "token_url": sim.token_url,
            "client_id": "demo",
            "client_secret": "demo",
            "extension": EXTENSION,
            "status_poll_interval": "1s",
            "retry_delay": "5s",
        },
        "smtp": {
            "listen": f"127.0.0.1:{smtp_port}",
            "hostname": "gatewayd-demo.localhost",
            "domains": [FAX_DOMAIN],
            "trusted_networks": ["127.0.0.1/32", "::1/128"],
            # The web console's login (docs/web.md); its password is made at each start and printed.
            "users": [{"name": WEB_USER, "password_hash": web_password_hash or hash_password(secrets.token_urlsafe(12)), "role": "admin",
                       "inbound": [EXTENSION]}],
        },
        "senders": [{"match": ["*@example.com"], "max_per_hour": 100}],
        "numbers": {"default_region": "RU"},
        "inbound": {"enabled": True, "extensions": [EXTENSION], "poll_interval": "2s"},
        "mail": {"relay": relay, "from": f"Fax Gateway <fax-gateway@{FAX_DOMAIN}>", "admin": ["admin@example.com"], "attach_document": "always"},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "web": {"listen": f"127.0.0.1:{web_port}"},
        "log": {"level": "warning", "format": "console"},
    }


def demo_config(*, state_dir: Path, smtp_port: int, http_port: int, sim: Any, relay: str) -> Config:
    data = demo_settings(state_dir=state_dir, smtp_port=smtp_port, http_port=http_port, sim=sim, relay=relay)
    return load_config_data(data, source="(demo)")


DEMO_CONFIG_HEADER = "# Written by `gatewayd demo`"


def fresh_start(workdir: Path) -> None:
    """Remove what an earlier demo run left in ``workdir`` (its state and Maildir).

    The simulator starts empty at every run, so the gateway must too: an old
    run's jobs would hold the fax ids the new simulator hands out again, and
    its queued jobs would go to a provider that never heard of them. Only a
    directory an earlier demo wrote (its config.toml says so) is cleared.
    """
    state_dir, maildir, config_file = workdir / "state", workdir / "mail", workdir / "config.toml"
    if not state_dir.exists() and not maildir.exists():
        return
    try:
        written_by_demo = config_file.read_text(encoding="utf-8").startswith(DEMO_CONFIG_HEADER)
    except OSError:
        written_by_demo = False
    if not written_by_demo:
        raise DemoError(f"{workdir} holds a state/ or mail/ directory the demo did not write; choose another --dir")
    for path in (state_dir, maildir):
        shutil.rmtree(path, ignore_errors=True)


def write_demo_config(path: Path, data: dict[str, Any]) -> Config:
    """Write the configuration the demo runs with and load it back through the real loader."""
    header = (
        f"{DEMO_CONFIG_HEADER}; valid while the demo runs (the simulator and\n"
        "# mail sink ports change at every start). Use it with the command line:\n"
        f"#   gatewayd jobs -c {path}\n\n"
    )
    path.write_text(header + to_toml(data), encoding="utf-8")
    return load_config(path)


def sample_pdf() -> bytes:
    pdf = FPDF(format="A4")
    pdf.add_page()
    font = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if font.exists():
        pdf.add_font("DejaVu", fname=str(font))
        pdf.set_font("DejaVu", size=20)
    else:
        pdf.set_font("Helvetica", size=20)
    pdf.cell(0, 20, "Hello from the gatewayd demo", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font_size(12)
    pdf.multi_cell(0, 8, "This page travelled by email to the gateway, was stored durably, "
                         "submitted once to the (simulated) fax provider and followed until it was sent.")
    return bytes(pdf.output())


def sample_tiff(pages: int = 2) -> bytes:
    """A G4 TIFF at fax resolution, like a fax machine's."""
    frames = []
    for n in range(pages):
        img = Image.new("1", (1728, 2200), 1)
        draw = ImageDraw.Draw(img)
        draw.rectangle((100, 100, 1628, 300), outline=0, width=6)
        draw.text((140, 170), f"Incoming fax - page {n + 1} of {pages}", fill=0)
        frames.append(img)
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", compression="group4", dpi=(204, 196), save_all=True, append_images=frames[1:])
    return buf.getvalue()


def sample_email(pdf: bytes, *, smtp_to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"You <{SAMPLE_SENDER}>"
    msg["To"] = smtp_to
    msg["Subject"] = "Quarterly figures"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content("Hello,\n\nplease find the figures attached.\n\nRegards,\nYou\n")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="figures.pdf")
    return msg


class Tour:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0
        self.tty = getattr(out, "isatty", lambda: False)()
        self._last_progress = 0.0
        self._in_progress = False

    def say(self, text: str = "") -> None:
        self.end_progress()
        print(text, file=self.out, flush=True)

    def heading(self, text: str) -> None:
        self.step += 1
        self.say(f"\n[{self.step}] {text}")

    def progress(self, text: str) -> None:
        """A line that updates in place on a terminal; every 5 s otherwise (logs, CI)."""
        if self.tty:
            print(f"\r    {text:70}", end="", file=self.out, flush=True)
            self._in_progress = True
        elif time.monotonic() - self._last_progress >= 5:
            self._last_progress = time.monotonic()
            print(f"    {text}", file=self.out, flush=True)

    def end_progress(self) -> None:
        if self._in_progress:
            self._in_progress = False
            print(file=self.out, flush=True)


async def _wait_for_mail(sink: MailSink, predicate: Any, timeout: float) -> SunkMail:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mail in sink.messages:
            if predicate(mail):
                return mail
        await asyncio.sleep(0.2)
    raise DemoError("the expected email did not arrive in time")


async def _follow_job(daemon: Daemon, job_id: int, tour: Tour, timeout: float) -> Any:
    assert daemon.rt is not None
    store = daemon.rt.store
    seen = None
    started = time.monotonic()
    spinner = "|/-\\"
    i = 0
    while time.monotonic() - started < timeout:
        job = await store.run(store.get_job, job_id)
        if job.state != seen:
            seen = job.state
            detail = f" (provider id {job.provider_id})" if job.provider_id else ""
            tour.say(f"    job {job_id}: {job.state}{detail}")
        if job.final:
            return job
        if job.state == "sending":
            tour.progress(f"{spinner[i % 4]} on the line to {job.number} ... {int(time.monotonic() - started)}s")
            i += 1
        await asyncio.sleep(0.25)
    raise DemoError(f"job {job_id} did not finish in time")


async def run_demo(workdir: Path, smtp_port: int, *, exit_after_tour: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    tour = Tour(out)
    workdir = workdir.absolute()
    state_dir, maildir, config_file = workdir / "state", workdir / "mail", workdir / "config.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    fresh_start(workdir)
    if smtp_port == 0:
        smtp_port = free_port()
    elif not port_is_free(smtp_port):
        raise DemoError(f"port {smtp_port} is in use on 127.0.0.1: try `gatewayd demo --smtp-port 0`")
    http_port = free_port()
    web_port = WEB_PORT if port_is_free(WEB_PORT) else free_port()
    web_password = secrets.token_urlsafe(9)

    tour.say("gatewayd demo: everything runs on 127.0.0.1, nothing leaves this machine.")
    async with run_simulator(send_delays=(2.0, 4.0)) as sim:
        sim.add_extension(EXTENSION, fax_mailto=RECEPTION)
        tour.heading("Provider simulator")
        tour.say(f"    fax API at {sim.base_url} (client demo/demo), fax extension {EXTENSION}, fax_mailto {RECEPTION}")
        async with MailSink(maildir=maildir) as sink:
            tour.heading("Mail sink")
            tour.say(f"    SMTP relay at {sink.relay}; every email it receives becomes a file in {maildir}/new/")
            settings = demo_settings(state_dir=state_dir, smtp_port=smtp_port, http_port=http_port, sim=sim, relay=sink.relay,
                                     web_port=web_port, web_password_hash=hash_password(web_password))
            config = write_demo_config(config_file, settings)
            daemon = Daemon(config, config_path=str(config_file), notifier=Notifier(None))
            daemon_task = asyncio.create_task(daemon.run(), name="gateway")
            code = 1
            try:
                await _wait_listening(smtp_port, daemon_task)
                tour.heading("Gateway")
                tour.say(f"    configuration {config_file}")
                tour.say(f"    SMTP listener on 127.0.0.1:{smtp_port} for <number>@{FAX_DOMAIN}; state in {state_dir}")
                tour.say(f"    health: http://127.0.0.1:{http_port}/healthz   metrics: http://127.0.0.1:{http_port}/metrics")
                tour.say(f"    web console: http://127.0.0.1:{web_port}/  (log in as {WEB_USER}, password {web_password})")
                tour_task = asyncio.create_task(_tour(daemon, sim, sink, tour, smtp_port), name="tour")
                await asyncio.wait({tour_task, daemon_task}, return_when=asyncio.FIRST_COMPLETED)
                if not tour_task.done():  # the gateway stopped (Ctrl-C) during the tour
                    tour_task.cancel()
                    tour.say("\nthe gateway stopped before the tour ended.")
                    return await daemon_task
                tour_task.result()  # a DemoError stops here
                _print_try_it(tour, smtp_port, maildir, config_file, http_port)
                tour.say(f"    or open the web console: http://127.0.0.1:{web_port}/  user {WEB_USER}  password {web_password}")
                if exit_after_tour:
                    daemon.request_stop()
                else:
                    tour.say("\nThe gateway keeps running; press Ctrl-C to stop it.")
                code = await daemon_task
            finally:
                if not daemon_task.done():
                    daemon.request_stop()
                    await asyncio.wait({daemon_task}, timeout=10)
    tour.say("demo stopped.")
    return code


async def _wait_listening(port: int, daemon_task: asyncio.Task[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_task.done():
            daemon_task.result()  # raises what stopped it
            raise DemoError("the gateway stopped during start-up")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise DemoError("the gateway did not start listening in time")


async def _tour(daemon: Daemon, sim: Any, sink: MailSink, tour: Tour, smtp_port: int) -> None:
    import aiosmtplib

    to = f"{SAMPLE_NUMBER}@{FAX_DOMAIN}"
    tour.heading(f"Sending a fax: an email with a PDF from {SAMPLE_SENDER} to {to}")
    msg = sample_email(sample_pdf(), smtp_to=to)
    try:
        _, reply = await aiosmtplib.send(msg, hostname="127.0.0.1", port=smtp_port, sender=SAMPLE_SENDER, recipients=[to])
    except aiosmtplib.SMTPResponseException as exc:
        raise DemoError(f"the sample fax was not accepted: {exc.code} {exc.message}") from None
    tour.say(f"    the gateway answered: 250 {reply}")
    job_ids = [int(x) for x in reply.rsplit("queued as", 1)[-1].split()] if "queued as" in reply else []
    if not job_ids:
        raise DemoError(f"the sample fax was not accepted: {reply}")
    job = await _follow_job(daemon, job_ids[0], tour, timeout=60)
    if job.state == "sent":
        tour.say(f"    fax sent: {job.pages} page(s) to {job.number} after {job.attempts} attempt(s)")
    else:
        tour.say(f"    the fax ended {job.state}: {job.reason}")
    report = await _wait_for_mail(sink, lambda m: "Fax to" in (m.message["Subject"] or ""), timeout=30)
    tour.say(f"    status report to {', '.join(report.rcpt_tos)}: \"{report.message['Subject']}\"")
    tour.say(f"      -> {report.path}")

    tour.heading(f"Receiving a fax: the provider gets a 2-page fax on extension {EXTENSION}")
    uuid = sim.inject_received(EXTENSION, sample_tiff(2), caller_id="74951234567", destination="78123092631")
    tour.say(f"    fax {uuid} from 74951234567 is waiting at the provider; the gateway polls for it ...")
    received = await _wait_for_mail(sink, lambda m: "Fax from" in (m.message["Subject"] or ""), timeout=60)
    tour.say(f"    fax received and relayed to {', '.join(received.rcpt_tos)}: \"{received.message['Subject']}\"")
    tour.say(f"      -> {received.path}")


def _print_try_it(tour: Tour, smtp_port: int, maildir: Path, config_file: Path, http_port: int) -> None:
    tour.heading("Try it yourself")
    tour.say("    send a fax with swaks:")
    # Debian 12's swaks (20201014) reads "--to +7..." as an option and names an
    # "--attach @file" attachment "@file": no "+", and an explicit name
    # (docs/operations.md, gatewayd demo).
    tour.say(f"      swaks --server 127.0.0.1:{smtp_port} --from {SAMPLE_SENDER} --to 78123092631@{FAX_DOMAIN} \\")
    tour.say("            --header 'Subject: my fax' --attach-type application/pdf --attach-name document.pdf --attach @document.pdf")
    tour.say("    or with Python:")
    tour.say(
        "      python3 -c \"import smtplib, email.message as m; e=m.EmailMessage(); e['From']='you@example.com'; "
        f"e['To']='+78123092631@{FAX_DOMAIN}'; e['Subject']='my fax'; "
        "e.add_attachment(open('document.pdf','rb').read(), maintype='application', subtype='pdf', filename='document.pdf'); "
        f"smtplib.SMTP('127.0.0.1', {smtp_port}).send_message(e)\""
    )
    tour.say(f"    status reports and received faxes land in {maildir}/new/ (one file per email)")
    tour.say("    inspect the gateway from another terminal:")
    tour.say(f"      gatewayd jobs -c {config_file}")
    tour.say(f"      gatewayd job 1 -c {config_file}")
    tour.say(f"      gatewayd received -c {config_file}")
    tour.say(f"      gatewayd provider-check -c {config_file}   (read-only check of every provider path)")
    tour.say(f"      curl -s http://127.0.0.1:{http_port}/healthz")


def main(args: argparse.Namespace) -> int:
    setup_logging("warning", "console")
    try:
        return asyncio.run(run_demo(Path(args.dir), args.smtp_port, exit_after_tour=args.exit_after_tour))
    except DemoError as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        return 0
