"""A real Dovecot on loopback for the IMAP tests, plus message and config builders.

Dovecot runs unprivileged in every case: as the current user when the tests
run as one, and as ``nobody`` when they run as root (CI), through
``subprocess.Popen(user=...)``; Dovecot then runs in its documented non-root
mode (every service as that user, no chroot). Its directory is a private
temporary directory owned by that user (pytest's ``tmp_path`` sits under a
root-only 0700 directory that ``nobody`` cannot enter); it is removed at
teardown. Listeners: implicit TLS (a certificate made here with
cryptography for 127.0.0.1/localhost) and plain IMAP, both on free ports on
127.0.0.1 only.

``deny_insert`` starts it with the ACL plugin refusing to put messages into
the named mailboxes (the gateway's MOVE then fails with NO): the honest way
to hold a message between "jobs committed" and "moved" for the crash test,
without any test hook in the production code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import grp
import imaplib
import io
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pikepdf
from tomli_w import dumps as to_toml

from gatewayd.config import Config, load_config
from gatewayd.daemon import Runtime
from gatewayd.email_to_fax.imap import ImapIntake
from gatewayd.email_to_fax.imap_session import ImapTuning
from gatewayd.email_to_fax.intake import Intake
from gatewayd.store import Store
from support.accounts import unprivileged_account
from support.gateway import build_gateway
from support.ports import free_port  # noqa: F401 (also a public name here)

DOVECOT = "/usr/sbin/dovecot"
IMAP_USER = "fax"
# A quote and a backslash: LOGIN must quote it correctly, and it must never
# show up in a log line.
IMAP_PASSWORD = 'S3cr"et\\pw-imap'
TRUSTED_ID = "mx.example.com"
FAX_ADDRESS = "fax@example.com"
SENDER = "alice@example.com"
NUMBER = "+78123092631"
NUMBER_2 = "+74951234567"


def require_dovecot() -> str:
    """Fail loudly (never skip): the IMAP tests need the real server."""
    if not os.access(DOVECOT, os.X_OK):
        raise AssertionError(
            f"{DOVECOT} not found: the IMAP tests need Dovecot (Debian package dovecot-imapd; `make test` installs it)"
        )
    return DOVECOT




def make_ca_and_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server cert.pem, server key.pem) for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatewayd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def _run_as() -> pwd.struct_passwd:
    return unprivileged_account("Dovecot's non-root mode")


@dataclass
class Dovecot:
    """One Dovecot instance; ``start``/``stop``/``restart`` keep the same ports and Maildir."""

    base: Path
    tls_port: int
    plain_port: int
    ca_file: Path
    user: str = IMAP_USER
    password: str = IMAP_PASSWORD
    deny_insert: tuple[str, ...] = ()
    extra_config: str = ""  # e.g. an imap_capability override
    proc: subprocess.Popen[bytes] | None = None
    account: pwd.struct_passwd = field(default_factory=_run_as)

    @classmethod
    def create(cls) -> Dovecot:
        require_dovecot()
        base = Path(tempfile.mkdtemp(prefix="gatewayd-dovecot-"))
        ca, cert, key = make_ca_and_cert(base)
        self = cls(base=base, tls_port=free_port(), plain_port=free_port(), ca_file=ca)
        for sub in ("run", "state", "home", "Maildir"):
            (base / sub).mkdir()
        (base / "users").write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n", encoding="utf-8")
        self._cert, self._key = cert, key
        return self

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _config(self) -> str:
        a = self.account
        group = grp.getgrgid(a.pw_gid).gr_name
        acl = ""
        if self.deny_insert:
            # Every right but "i" (insert) and "p" (post): COPY/MOVE/APPEND into
            # these fail with NO [NOPERM]; other mailboxes keep the owner's defaults.
            rules = "".join(f"{name} owner lrwstekxa\n" for name in self.deny_insert)
            (self.base / "global-acl").write_text(rules, encoding="utf-8")
            acl = f"mail_plugins = $mail_plugins acl\nplugin {{\n  acl = vfile:{self.base}/global-acl\n}}\n"
        return f"""# generated by tests/support/imap.py
protocols = imap
listen = 127.0.0.1
base_dir = {self.base}/run
state_dir = {self.base}/state
instance_name = gatewayd-test-{self.tls_port}
log_path = {self.log_path}
info_log_path = {self.log_path}
default_internal_user = {a.pw_name}
default_internal_group = {group}
default_login_user = {a.pw_name}
first_valid_uid = 1
first_valid_gid = 1
ssl = yes
ssl_cert = <{self._cert}
ssl_key = <{self._key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_failure_delay = 0
# no anvil auth penalty for the wrong-password test, which then logs in again
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
mail_location = maildir:{self.base}/Maildir
mailbox_idle_check_interval = 1 secs
{acl}
{self.extra_config}
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {self.base}/users
}}
userdb {{
  driver = static
  args = uid={a.pw_uid} gid={a.pw_gid} home={self.base}/home
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.plain_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""

    def start(self, *, deny_insert: Sequence[str] | None = None, timeout: float = 15.0) -> None:
        if deny_insert is not None:
            self.deny_insert = tuple(deny_insert)
        conf = self.base / "dovecot.conf"
        conf.write_text(self._config(), encoding="utf-8")
        if os.getuid() == 0:
            for root, dirs, files in os.walk(self.base):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), self.account.pw_uid, self.account.pw_gid)
            os.chown(self.base, self.account.pw_uid, self.account.pw_gid)
        kwargs: dict[str, Any] = {}
        if os.getuid() == 0:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True, **kwargs,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{out}\n{self.log_tail()}")
            if all(_port_open(p) for p in (self.tls_port, self.plain_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"dovecot did not listen on 127.0.0.1:{self.tls_port} in {timeout}s\n{self.log_tail()}")

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM (a restart as an administrator does it) or, at teardown, SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # A logged-in imap process outlives its master (it ends only when its
        # client goes); a restart here means every connection is cut, as after
        # a crash or a reboot. They are all in the session started above.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()
        # The listening sockets close with the master; wait until the port is free.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _port_open(self.tls_port):
            time.sleep(0.05)

    def restart(self, *, deny_insert: Sequence[str] | None = None, graceful: bool = True) -> None:
        """``graceful=False`` (SIGKILL, like a crash) saves the second a clean Dovecot shutdown takes."""
        self.stop(graceful=graceful)
        self.start(deny_insert=deny_insert)

    def remove(self) -> None:
        self.stop(graceful=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # --------------------------------------------------- a second client

    def client(self) -> imaplib.IMAP4_SSL:
        """The stdlib client (independent of the gateway's aioimaplib), over TLS."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=ctx, timeout=10)
        imap.login(self.user, self.password)
        return imap

    def append_sync(self, raw: bytes, mailbox: str = "INBOX") -> None:
        imap = self.client()
        try:
            typ, data = imap.append(_q(mailbox), None, None, raw)
            assert typ == "OK", (typ, data)
        finally:
            imap.logout()

    def count_sync(self, mailbox: str) -> int:
        """Messages in ``mailbox`` (0 when it does not exist)."""
        imap = self.client()
        try:
            typ, data = imap.status(_q(mailbox), "(MESSAGES)")
            if typ != "OK":
                return 0
            text = data[0].decode()
            return int(text.rsplit("MESSAGES", 1)[1].strip(" )"))
        finally:
            imap.logout()

    def fetch_all_sync(self, mailbox: str) -> list[bytes]:
        imap = self.client()
        try:
            typ, _ = imap.select(_q(mailbox), readonly=True)
            if typ != "OK":
                return []
            typ, data = imap.uid("SEARCH", None, "ALL")
            out = []
            for uid in data[0].split():
                typ, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                out.append(parts[0][1])
            return out
        finally:
            imap.logout()

    def flags_sync(self, mailbox: str) -> list[str]:
        imap = self.client()
        try:
            imap.select(_q(mailbox), readonly=True)
            typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
            return [d.decode() for d in data if d]
        finally:
            imap.logout()

    async def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        await asyncio.to_thread(self.append_sync, raw, mailbox)

    async def count(self, mailbox: str) -> int:
        return await asyncio.to_thread(self.count_sync, mailbox)

    async def counts(self, *mailboxes: str) -> tuple[int, ...]:
        return tuple([await self.count(m) for m in mailboxes])


def _q(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ messages


def make_pdf(pages: int = 1, *, encrypted: bool = False) -> bytes:
    pdf = pikepdf.new()
    for _ in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
    buf = io.BytesIO()
    if encrypted:
        pdf.save(buf, encryption=pikepdf.Encryption(owner="owner-pw", user="user-pw"))
    else:
        pdf.save(buf)
    return buf.getvalue()


def auth_results(
    *, authserv_id: str = TRUSTED_ID, dmarc: str | None = "pass", spf: str | None = None, dkim: str | None = None,
    domain: str = "example.com",
) -> str:
    parts = [authserv_id]
    if dkim:
        parts.append(f"dkim={dkim} header.d={domain} header.s=sel")
    if spf:
        parts.append(f"spf={spf} smtp.mailfrom=bounce@{domain}")
    if dmarc:
        parts.append(f"dmarc={dmarc} (p=reject dis=none) header.from={domain}")
    if len(parts) == 1:
        parts.append("none")
    return "; ".join(parts)


def fax_message(
    *,
    sender: str = SENDER,
    to: Sequence[str] = (f"fax+{NUMBER}@example.com",),
    subject: str = "Invoice",
    authentication_results: Sequence[str] | None = None,
    pdf: bytes | None = None,
    body: str = "",
    message_id: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An email as the MTA would deliver it: its Authentication-Results on top."""
    msg = EmailMessage(policy=SMTP)
    results = [auth_results()] if authentication_results is None else list(authentication_results)
    for value in results:
        msg["Authentication-Results"] = value
    for name, value in extra_headers:
        msg[name] = value
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = "Tue, 25 Nov 2025 10:00:00 +0300"
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    msg.set_content(body or "Please fax the attachment.\n")
    msg.add_attachment(pdf if pdf is not None else make_pdf(1), maintype="application", subtype="pdf", filename="invoice.pdf")
    return msg.as_bytes(policy=SMTP)


# ------------------------------------------------------------------ config


def config_data(
    dovecot: Dovecot, state_dir: Path, *, idle: bool = True, poll_interval: str = "1s",
    base_url: str = "http://127.0.0.1:9/api/ver1.0", relay: str = "127.0.0.1:9", smtp_port: int | None = None,
) -> dict[str, Any]:
    return {
        "provider": {"base_url": base_url, "client_id": "demo", "client_secret": "demo", "extension": 122, "timeout": "5s"},
        "smtp": {"listen": f"127.0.0.1:{smtp_port or free_port()}", "hostname": "gw.test", "domains": ["fax.example.com"],
                 "max_message_size": "5MB", "processes": 1},  # one listener process: tests read its sessions and metrics (the default, "auto": test_smtp_processes.py)
        "senders": [{"match": ["*@example.com"]}],
        "imap": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": dovecot.tls_port,
            "username": dovecot.user,
            "password": dovecot.password,
            "tls_ca_file": str(dovecot.ca_file),
            "addresses": [FAX_ADDRESS],
            "trusted_authserv_id": TRUSTED_ID,
            "idle": idle,
            "poll_interval": poll_interval,
        },
        "inbound": {"enabled": False},
        "mail": {"relay": relay, "from": "Fax Gateway <fax-gateway@example.com>"},
        "storage": {"state_dir": str(state_dir)},
        "http": {"listen": ""},
        "log": {"level": "info", "format": "json"},
    }


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> float:
    """Poll ``predicate`` (sync or async) until true; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------ gateway

FAST = ImapTuning(connect_timeout=5, command_timeout=10, fetch_timeout=10, min_backoff=0.2, max_backoff=1.0,
                  retry_base=0.5, retry_cap=2.0, logout_timeout=1.0)


def load(tmp_path: Path, data: dict[str, Any]) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(data), encoding="utf-8")
    return load_config(path, env={})


@dataclasses.dataclass
class Gateway:
    rt: Runtime
    service: ImapIntake
    intake: Intake

    @property
    def store(self) -> Store:
        return self.rt.store

    def jobs(self) -> list[Any]:
        return sorted(self.store.list_jobs(limit=1000), key=lambda j: j.id)

    def replies(self) -> list[Any]:
        return self.store.list_mail(kind="reply")


@contextlib.asynccontextmanager
async def run_imap(config: Config, *, tuning: ImapTuning = FAST, intake: Any = Intake) -> AsyncIterator[Gateway]:
    """Store, Intake and ImapIntake in this loop (no sender: jobs stay queued):
    support.gateway.in_process with only the IMAP service.

    ``intake`` is called with the Runtime to make the intake (a test double
    may wrap the real one)."""
    made: list[Any] = []

    def imap_service(rt: Runtime) -> ImapIntake:
        made.append(intake(rt))
        return ImapIntake(rt, made[0], tuning=tuning)

    gw = build_gateway(config, only={"imap"}, replace={"imap": imap_service}, provider=None)
    await gw.start()
    try:
        yield Gateway(gw.rt, gw.service("imap"), made[0])
    finally:
        try:
            await gw.stop(timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"ImapIntake.run did not end cleanly within 10 s of stop: {exc}") from None
