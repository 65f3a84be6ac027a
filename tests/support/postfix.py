"""A private Postfix with the docs/deployment.md snippet, and a private Dovecot
that checks its users' passwords through the documented auth socket.

Both run from a temporary directory with their own configuration, queue and
state, listen on 127.0.0.1 only (Postfix on a free port; Dovecot on no port
at all: only its auth socket), and are stopped and removed at the end. A
private Postfix instance needs root (``postfix start`` refuses otherwise), so
does this Dovecot (it hands the socket to the ``postfix`` user, as the doc's
listener block says): a test run without root fails loudly.

The Postfix side is what bench/_common.py's ``Postfix`` does for the
benchmarks (``postfix -c DIR`` with its own queue), here with master.cf
written whole instead of derived from the host's, so nothing outside the
temporary directory is read or started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.ports import free_port  # noqa: F401 (also a public name here)

POSTFIX = "/usr/sbin/postfix"
POSTMAP = "/usr/sbin/postmap"
DOVECOT = "/usr/sbin/dovecot"

# Every service a relay-only instance uses, chroot off (the private queue is
# not laid out for one), no listener but one smtpd on 127.0.0.1.
MASTER_CF = """\
# written by tests/support/postfix.py
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
showq     unix  n       -       n       -       -       showq
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The instance's own settings; the doc's snippet is appended after them.
BASE_MAIN_CF = """\
# written by tests/support/postfix.py: a private instance
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.com
mydomain = example.com
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
{mynetworks}
default_transport = error:this test relays only the fax domain
local_transport = error:no local delivery here
alias_maps =
alias_database =
smtpd_peername_lookup = no
maillog_file = {queue}/maillog
biff = no
smtputf8_enable = no
"""


def need(path: str, package: str) -> str:
    if not os.path.exists(path):
        # Never a skip: a missing tool must make the run fail loudly.
        pytest.fail(f"{path} not found: install the Debian package {package} (make test-deps)", pytrace=False)
    return path


def need_root(what: str) -> None:
    if os.getuid() != 0:
        pytest.fail(f"{what} needs root (a private Postfix instance is started with `postfix -c DIR start`)", pytrace=False)




def wait_port(port: int, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else "(no log)"
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s\n{tail}")


@dataclass
class PrivatePostfix:
    """``postfix -c ROOT/etc``: main.cf and master.cf as given, lookup tables postmapped."""

    root: Path
    port: int

    @classmethod
    def create(cls) -> "PrivatePostfix":
        need_root("the Postfix test")
        need(POSTFIX, "postfix")
        root = Path(tempfile.mkdtemp(prefix="gatewayd-postfix-", dir="/var/tmp"))
        root.chmod(0o755)
        self = cls(root, free_port())
        for d in (self.conf, self.queue, self.data):
            d.mkdir()
        shutil.chown(self.data, "postfix", "postfix")
        return self

    @property
    def conf(self) -> Path:
        return self.root / "etc"

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.queue / "maillog"

    def base_main_cf(self, mynetworks: str) -> str:
        return BASE_MAIN_CF.format(queue=self.queue, data=self.data, mynetworks=mynetworks)

    def configure(self, main_cf: str, tables: dict[str, str]) -> None:
        (self.conf / "main.cf").write_text(main_cf)
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        for name, text in tables.items():
            (self.conf / name).write_text(text)
            self._run(need(POSTMAP, "postfix"), "-c", str(self.conf), f"hash:{self.conf / name}")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(POSTFIX, "-c", str(self.conf), *args, check=check)

    def start(self) -> None:
        checked = self.postfix("check")
        assert "warning" not in (checked.stderr + checked.stdout).lower(), checked.stderr + checked.stdout
        self.postfix("start")
        wait_port(self.port, 30, "postfix", self.log)

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self.postfix("stop", check=False)
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_file.exists():
            self.postfix("abort", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class AuthDovecot:
    """Dovecot with no protocol, only ``service auth`` with the doc's listener block."""

    base: Path
    user: str
    password: str
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, user: str, password: str, more_users: dict[str, str] | None = None) -> "AuthDovecot":
        need_root("the Dovecot auth socket for Postfix")
        need(DOVECOT, "dovecot-core")
        base = Path(tempfile.mkdtemp(prefix="gatewayd-dovecot-auth-", dir="/var/tmp"))
        for sub in ("run", "state"):
            (base / sub).mkdir()
        users = {user: password, **(more_users or {})}
        (base / "users").write_text("".join(f"{name}:{{PLAIN}}{secret}::::::\n" for name, secret in users.items()), encoding="utf-8")
        # Dovecot's auth worker reads the passwd-file as the dovecot user
        # (a test password in a directory removed at the end).
        base.chmod(0o755)
        (base / "users").chmod(0o644)
        return cls(base, user, password)

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    def start(self, listener_block: str, socket_path: Path, timeout: float = 15.0) -> None:
        listener = "\n".join("  " + line for line in listener_block.strip().splitlines())
        conf = self.base / "dovecot.conf"
        conf.write_text(f"""# written by tests/support/postfix.py
protocols = none
listen = 127.0.0.1
base_dir = {self.base}/run
state_dir = {self.base}/state
instance_name = gatewayd-postfix-auth-{os.getpid()}-{self.base.name}
log_path = {self.log_path}
info_log_path = {self.log_path}
# The test's client logs in without TLS, over loopback only.
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {self.base}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
{listener}
}}
""", encoding="utf-8")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{out}\n{self.log_tail()}")
            if socket_path.exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"dovecot made no auth socket {socket_path} in {timeout}s\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def remove(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdout:
                proc.stdout.close()
        shutil.rmtree(self.base, ignore_errors=True)
