"""What the benchmarks share: a private Postfix on loopback, smtp-source, the
provider simulator and gatewayd as subprocesses, a concurrent SMTP client
that times each reply, and test documents made at run time.

Everything listens on 127.0.0.1 only, every run is bounded in count and time,
and everything started here is stopped here (each by its own pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

from tomli_w import dumps as to_toml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DOMAIN = "fax.example.com"
NUMBER = "+78123092631"
SENDER = "alice@example.com"
RCPT = f"{NUMBER}@{DOMAIN}"


class BenchError(Exception):
    """Something the benchmark needs did not work: exit non-zero."""


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return f"{cpus} cores ({model}), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, Python {sys.version.split()[0]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def require(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        raise BenchError(f"{tool} is not installed (Debian package {package}; `make bench-deps` installs it)")
    return path


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# ------------------------------------------------------------------ documents


def noise_jpeg(target_bytes: int, seed: int = 1) -> bytes:
    """A JPEG of random noise about ``target_bytes`` long (a scan-like, incompressible image)."""
    from PIL import Image

    rng = random.Random(seed)
    side = 64
    data = b""
    for _ in range(6):
        img = Image.frombytes("L", (side, side), rng.randbytes(side * side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        if abs(len(data) - target_bytes) < target_bytes * 0.03:
            break
        side = max(16, int(side * (target_bytes / len(data)) ** 0.5))
    return data


def smallest_pdf() -> bytes:
    """The smallest real one-page PDF pikepdf writes (a few hundred bytes)."""
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595.28, 841.89))
    buf = io.BytesIO()
    pdf.save(buf, compress_streams=True, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    return buf.getvalue()


def pdf_of_size(target_bytes: int, seed: int = 1) -> bytes:
    """A one-page PDF about ``target_bytes`` long: a noise JPEG on an A4 page (img2pdf)."""
    if target_bytes < 4000:
        return smallest_pdf()
    import img2pdf

    jpeg = noise_jpeg(target_bytes - 1000, seed)
    layout = img2pdf.get_layout_fun((img2pdf.mm_to_pt(210), img2pdf.mm_to_pt(297)))
    return img2pdf.convert(io.BytesIO(jpeg), layout_fun=layout)


def fax_message(pdf: bytes, *, subject: str = "bench", name: str = "scan.pdf", sender: str = SENDER, to: str = RCPT,
                body: str = "") -> bytes:
    """An email with ``pdf`` attached and ``body`` as its text, none by default (CRLF line ends)."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}.{random.getrandbits(32)}@bench.test>"
    msg["Date"] = "Mon, 01 Jan 2024 12:00:00 +0000"
    msg.set_content(body)
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes()


def g4_tiff(pages: int, workdir: Path) -> bytes:
    """A multi-page G4 fax TIFF (204x196 dpi, A4) from ghostscript, text on every page."""
    gs = require("gs", "ghostscript")
    ps = workdir / "pages.ps"
    lines = ["%!PS", "/Helvetica findfont 28 scalefont setfont"]
    for n in range(1, pages + 1):
        lines += [f"72 {720 - n * 5} moveto (Benchmark fax page {n} of {pages}) show",
                  "72 100 moveto 450 0 rlineto 0 550 rlineto -450 0 rlineto closepath stroke", "showpage"]
    ps.write_text("\n".join(lines) + "\n")
    out = workdir / "fax.tif"
    subprocess.run([gs, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sPAPERSIZE=a4", "-sDEVICE=tiffg4", "-r204x196",
                    "-dAdjustWidth=0", f"-sOutputFile={out}", str(ps)], check=True, capture_output=True, timeout=120)
    return out.read_bytes()


# --------------------------------------------------------------------- Postfix


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
default_transport = discard:bench
relay_transport = discard:bench
local_transport = discard:bench
alias_maps =
alias_database =
smtpd_peername_lookup = no
message_size_limit = 60000000
maillog_file = {queue}/maillog
biff = no
smtputf8_enable = no
"""

# The private instance's master.cf, written whole (issue 19): deriving it from
# the system's /etc/postfix/master.cf broke on a machine whose `smtp inet` line
# had been moved to another address (nothing ever listened on the bench port).
# Only what a discard-everything instance uses; no chroot (column 5 "n"): the
# instance's queue is not laid out for one.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    """A private Postfix instance (``postfix -c DIR``) on 127.0.0.1:port, discarding all mail."""

    port: int = 0
    root: Path | None = None

    def __enter__(self) -> "Postfix":
        require("postfix", "postfix")
        self.port = self.port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gatewayd-bench-postfix-", dir="/var/tmp"))
        self.root.chmod(0o755)
        conf, queue, data = self.root / "etc", self.root / "queue", self.root / "data"
        for d in (conf, queue, data):
            d.mkdir()
        shutil.chown(data, "postfix", "postfix")
        (conf / "main.cf").write_text(MAIN_CF.format(queue=queue, data=data))
        (conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self._postfix("check")
        self._postfix("start")
        try:
            wait_port(self.port, 30)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.root is not None
        env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
        proc = subprocess.run(["postfix", "-c", str(self.root / "etc"), *args], capture_output=True, text=True, timeout=60, env=env)
        if check and proc.returncode != 0:
            raise BenchError(f"postfix {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def __exit__(self, *exc: object) -> None:
        if self.root is None:
            return
        self._postfix("stop", check=False)
        # "postfix stop" waits for the master; make sure before removing its queue.
        pid_file = self.root / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_file.exists():
            self._postfix("abort", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def queued(self) -> int:
        """Messages in the instance's queue (0 once discarded)."""
        assert self.root is not None
        count = 0
        for sub in ("incoming", "active", "deferred", "maildrop"):
            d = self.root / "queue" / sub
            if d.exists():
                count += sum(len(files) for _, _, files in os.walk(d))
        return count


def smtp_source(port: int, message_file: Path, *, sessions: int, messages: int, timeout: float = 300.0) -> float:
    """``smtp-source -s SESSIONS -m MESSAGES -F FILE``; returns the wall time in seconds."""
    tool = require("smtp-source", "postfix")
    args = [tool, "-s", str(sessions), "-m", str(messages), "-F", str(message_file), "-M", "bench.localdomain",
            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}"]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"smtp-source failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return elapsed


def write_lf_message(raw: bytes, path: Path) -> Path:
    """smtp-source -F appends CRLF to each line: give it LF line ends."""
    path.write_bytes(raw.replace(b"\r\n", b"\n"))
    return path


# ---------------------------------------------------------------- subprocesses


@dataclass
class Simulator:
    """``gatewayd simulator`` on 127.0.0.1, driven through its /_sim/ control API."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Simulator":
        self.port = self.port or free_port()
        self.proc = subprocess.Popen([PYTHON, "-m", "gatewayd", "simulator", "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        wait_port(self.port, 30, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/api/ver1.0"

    def control(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        resp = httpx.request(method, self.url + "/_sim/" + path, json=body, timeout=30)
        if resp.status_code >= 400:
            raise BenchError(f"simulator control {method} {path}: {resp.status_code} {resp.text[:200]}")
        return resp.json() if resp.content else None


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def gateway_config(state_dir: Path, *, smtp_port: int, base_url: str, **overrides: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "provider": {"base_url": base_url, "token_url": base_url.split("/api/")[0] + "/oauth/token",
                     "client_id": "demo", "client_secret": "demo", "extension": 122, "timeout": "10s"},
        "smtp": {"listen": f"127.0.0.1:{smtp_port}", "hostname": "gw.bench", "domains": [DOMAIN],
                 "max_message_size": "25MB", "max_connections": 200, "trusted_networks": ["127.0.0.1/32"]},
        "senders": [{"match": ["*@example.com"]}],
        "documents": {"cover_page": "never"},
        "inbound": {"enabled": False},
        "mail": {"relay": "127.0.0.1:9"},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "log": {"level": "warning", "format": "json"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return data


@dataclass
class Gatewayd:
    """``gatewayd run`` as a subprocess."""

    workdir: Path
    base_url: str
    overrides: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Gatewayd":
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        config = self.workdir / "config.toml"
        config.write_text(to_toml(gateway_config(self.state_dir, smtp_port=self.port, base_url=self.base_url, **self.overrides)))
        env = {k: v for k, v in os.environ.items() if k not in ("GATEWAYD_CONFIG", "NOTIFY_SOCKET", "STATE_DIRECTORY")}
        env["PYTHONPATH"] = str(REPO)
        self.log = open(self.workdir / "gatewayd.log", "wb")
        self.proc = subprocess.Popen([PYTHON, "-m", "gatewayd", "run", "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            wait_port(self.port, 60, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        code = stop_process(self.proc)
        self.log.close()
        if code not in (None, 0):
            tail = (self.workdir / "gatewayd.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"gatewayd exited with {code}:\n{tail}")

    def vm_hwm_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise BenchError("no VmHWM in /proc status")

    def pids(self) -> list[int]:
        """The daemon and its children (the extra SMTP listener processes)."""
        assert self.proc is not None
        found = [self.proc.pid]
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in children.read_text().split()]
        return found

    def tree_kib(self, field_name: str) -> int:
        """``field_name`` (VmHWM, VmRSS) summed over ``pids()``: for peaks, the
        sum of each process's own peak (an upper bound of the peak of the sum)."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field_name}:"):
                    total += int(line.split()[1])
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon and its listener processes so far (/proc/PID/stat)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def vm_rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError("no VmRSS in /proc status")

    def jobs(self) -> int:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.state_dir / 'gatewayd.sqlite3'}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
        finally:
            conn.close()


def hold_provider(sim: Simulator) -> None:
    """Every fax POST answers 429 with an hour's reset: the sender holds after one try,
    so an intake figure measures intake (parse, policy, document, commit), not uploads."""
    sim.control("POST", "faults", {"path": "/extension/*/fax/out/", "method": "POST", "count": None, "rate_limit_reset": 3600})


# ------------------------------------------------------------------ the client


@dataclass
class SendResult:
    reply: str
    latency: float  # end of DATA (last byte of ".CRLF" written) to the reply
    total: float


async def _reply(reader: asyncio.StreamReader, timeout: float) -> str:
    while True:
        raw = await asyncio.wait_for(reader.readline(), timeout)
        if not raw:
            raise ConnectionError("server closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 4 or line[3] != "-":
            return line


def dot_stuff(raw: bytes) -> bytes:
    stuffed = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n..")[2:]
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


async def send_one(port: int, stuffed: bytes, *, timeout: float = 120.0, reuse: tuple[Any, Any] | None = None) -> SendResult:
    """One transaction on a new connection: EHLO, MAIL, RCPT, DATA, QUIT."""
    started = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        await _reply(reader, timeout)
        for line in (b"EHLO bench.localdomain\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{RCPT}>\r\n".encode(), b"DATA\r\n"):
            writer.write(line)
            reply = await _reply(reader, timeout)
            if not reply.startswith(("250", "354")):
                return SendResult(reply, 0.0, time.perf_counter() - started)
        writer.write(stuffed)
        await writer.drain()
        end_of_data = time.perf_counter()
        reply = await _reply(reader, timeout)
        done = time.perf_counter()
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 5)
        return SendResult(reply, done - end_of_data, done - started)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 5)


async def run_clients(port: int, raw: bytes, *, sessions: int, messages: int, timeout: float = 120.0) -> tuple[list[SendResult], float]:
    """``messages`` transactions over ``sessions`` concurrent connections (a new one per
    message, like smtp-source without -d); returns the results and the wall time."""
    stuffed = dot_stuff(raw)
    results: list[SendResult] = []
    todo = iter(range(messages))

    async def worker() -> None:
        for _ in todo:
            try:
                results.append(await send_one(port, stuffed, timeout=timeout))
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                results.append(SendResult(f"client error: {type(exc).__name__}: {exc}", 0.0, 0.0))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return results, time.perf_counter() - started


def summarize_replies(results: Sequence[SendResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = r.reply[:3] if r.reply[:3].isdigit() else r.reply[:40]
        counts[key] = counts.get(key, 0) + 1
    return counts


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"gatewayd-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
