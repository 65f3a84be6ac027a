"""A real PostgreSQL for the tests of the PostgreSQL store (issue 17), started unprivileged.

Debian's server binaries (package postgresql-15, in the Makefile's
TEST_DEBS) are found under /usr/lib/postgresql/<version>/bin, the newest
version first; nothing relies on the /usr/local/bin links a developer's
machine may have. When none is there the test fails loudly, it never skips.

initdb and postgres refuse to run as root, and the tests run as root in CI:
both then run as ``nobody`` (``subprocess.Popen(user=...)``), in a private
temporary directory owned by it (pytest's ``tmp_path`` sits under a root-only
0700 directory ``nobody`` cannot enter); as the current user otherwise, as
the Dovecot of tests/support/imap.py does. The directory is removed at the
end.

Listeners: 127.0.0.1 on a free port, and a Unix socket in the directory.
Authentication (pg_hba.conf): the superuser ``postgres`` is trusted on both
(the admin helpers here use it over the socket); every other role must give
its password over TCP (scram-sha-256). The store's role, ``gatewayd``, is an
ordinary role (no superuser, no CREATEDB) with PG_PASSWORD, and owns each
fresh database: the store must work with no more rights than a
deployment's database owner has (docs/deployment.md).

``fsync`` and ``full_page_writes`` are off: a test server's data does not
have to survive a power cut, and with them on every commit waits for the
disk the other helpers share. ``synchronous_commit`` stays on: a commit is
then in the kernel's page cache before the client hears of it, so it
survives the server's crash (``stop("immediate")``, a SIGKILL), which is
what the outage tests check ("250 means stored").

One server per pytest process (tests/conftest.py's session fixture
``pg_server``: one per xdist worker), stopped at the end of the session;
``fresh_database`` gives each test its own empty database on it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from support.ports import PortClash, free_port, retry_on_port_clash

PG_PACKAGE = "postgresql-15"
PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
ROLE = "gatewayd"
# A space, a quote and a backslash: the store must hand it to libpq as it is
# (never pasted into a conninfo string), and it must never show up in a log line.
PG_PASSWORD = "pg s3cr'et\\pw \"17\""


class PostgresMissing(AssertionError):
    """No PostgreSQL server binaries: the tests that need one fail, loudly."""


def pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres in it."""
    found = []
    for bindir in PG_ROOT.glob("*/bin"):
        version = bindir.parent.name
        if version.isdigit() and all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            found.append((int(version), bindir))
    if not found:
        raise PostgresMissing(
            f"no PostgreSQL server in {PG_ROOT}/*/bin: the PostgreSQL store tests need the Debian package "
            f"{PG_PACKAGE} (`make test` installs it, TEST_DEBS in the Makefile)"
        )
    return max(found)[1]


def _run_as() -> pwd.struct_passwd:
    if os.getuid() == 0:
        return pwd.getpwnam("nobody")
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        raise AssertionError(f"uid {os.getuid()} has no passwd entry: initdb needs a user name") from None


@dataclass
class PgServer:
    """One PostgreSQL cluster; ``stop``/``start`` keep its data directory and port."""

    base: Path
    bindir: Path
    port: int = 0
    account: pwd.struct_passwd = field(default_factory=_run_as)
    proc: subprocess.Popen[bytes] | None = None
    role: str = ROLE
    password: str = PG_PASSWORD
    host: str = "127.0.0.1"
    provisioned: bool = False  # the store's role is made at the first start
    # The benchmarks (bench/bench_nodes.py) measure a server that waits for
    # its disk, as a deployment's does; the tests do not (module docstring).
    durable: bool = False
    _names: Iterator[int] = field(default_factory=itertools.count)

    # ------------------------------------------------------------ life

    @classmethod
    def create(cls, *, durable: bool = False) -> PgServer:
        """initdb in a new private directory (not started yet: ``start``)."""
        bindir = pg_bindir()
        base = Path(tempfile.mkdtemp(prefix="gatewayd-pg-"))
        self = cls(base=base, bindir=bindir, durable=durable)
        self.socket_dir.mkdir()
        self._chown()
        self._as_owner([
            str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ])
        (self.data_dir / "pg_hba.conf").write_text(
            "# generated by tests/support/postgres.py\n"
            f"local all {SUPERUSER} trust\n"
            f"host  all {SUPERUSER} 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )
        return self

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _chown(self) -> None:
        if os.getuid() != 0:
            return
        for root, dirs, files in os.walk(self.base):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), self.account.pw_uid, self.account.pw_gid)
        os.chown(self.base, self.account.pw_uid, self.account.pw_gid)

    def _user_kwargs(self) -> dict[str, Any]:
        if os.getuid() == 0:
            return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        return {}

    def _as_owner(self, argv: list[str]) -> None:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=self.base,
                              env=self._env(), timeout=120, **self._user_kwargs())
        if done.returncode != 0:
            raise AssertionError(f"{argv[0]} exited with {done.returncode}:\n{done.stdout.decode(errors='replace')}"
                                 f"\n{done.stderr.decode(errors='replace')}")

    def _env(self) -> dict[str, str]:
        return {"PATH": f"{self.bindir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.base), "TZ": "UTC"}

    def start(self, timeout: float = 30.0) -> None:
        """Start the server: on its port when it has one, else on a free one (again on a clash)."""
        if self.running:
            return
        if self.port:
            self._start_on(self.port, timeout)
        else:
            retry_on_port_clash(lambda port: self._start_on(port, timeout))
        if not self.provisioned:
            with self.admin() as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.role), sql.Literal(self.password)))
            self.provisioned = True

    def _start_on(self, port: int, timeout: float) -> None:
        self.port = port
        self.log_path.unlink(missing_ok=True)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if os.getuid() == 0:
                os.fchown(log, self.account.pw_uid, self.account.pw_gid)
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(port),
                 "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.socket_dir}",
                 # Speed for tests only (module docstring): no waiting for the disk.
                 *(() if self.durable else ("-c", "fsync=off", "-c", "full_page_writes=off")),
                 "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                 "-c", "log_min_messages=warning", "-c", "log_connections=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.base, env=self._env(),
                start_new_session=True, **self._user_kwargs(),
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                tail = self.log_tail()
                if "Address already in use" in tail or "could not create any TCP/IP sockets" in tail:
                    raise PortClash(tail)
                raise AssertionError(f"postgres exited at start:\n{tail}")
            try:
                with psycopg.connect(self.superuser_url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.02)
        self.stop()
        raise AssertionError(f"postgres did not accept connections on {self.host}:{port} in {timeout}s\n{self.log_tail()}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: "immediate" (SIGQUIT, what ``pg_ctl stop -m immediate`` sends:
        no checkpoint, like a crash for the clients) or "fast" (SIGINT, a clean shutdown)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # Backends end with their postmaster; any that lingers would hold the port.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    @contextlib.contextmanager
    def stopped(self, mode: str = "immediate") -> Iterator[None]:
        """The server down for the body (a database outage); up again afterwards, same port and data."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------ admin

    @property
    def superuser_url(self) -> str:
        """Over the Unix socket, trusted (the admin helpers)."""
        return f"postgresql://{SUPERUSER}@/postgres?host={self.socket_dir}&port={self.port}"

    def url(self, dbname: str) -> str:
        """The store's URL for ``dbname`` over TCP; the password goes separately (``password``)."""
        return f"postgresql://{self.role}@{self.host}:{self.port}/{dbname}"

    def socket_url(self, dbname: str) -> str:
        """The same over the Unix socket (still scram: the password is needed)."""
        return f"postgresql://{self.role}@/{dbname}?host={self.socket_dir}&port={self.port}"

    @contextlib.contextmanager
    def admin(self, dbname: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
        """A superuser connection in autocommit mode (CREATE/DROP DATABASE need it)."""
        url = self.superuser_url.replace("/postgres?", f"/{dbname}?", 1)
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            yield conn

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database (from template0) owned by the store's role; its name."""
        name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {}").format(
                sql.Identifier(name), sql.Identifier(self.role)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate_backends(self, dbname: str) -> int:
        """Cut every connection to ``dbname`` (as a database restart or a failover does); how many."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def connect(self, dbname: str, **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection as the store's role (with its password), to look at what the store wrote."""
        return psycopg.connect(self.url(dbname), password=self.password, connect_timeout=10, **kwargs)


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A started server, removed (stopped, directory deleted) afterwards."""
    server = PgServer.create()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def fresh_database(server: PgServer, prefix: str = "t") -> Iterator[str]:
    """A new empty database's name for the body; dropped afterwards (the server started again if a test left it down)."""
    name = server.create_database(prefix)
    try:
        yield name
    finally:
        if not server.running:
            server.start()
        server.drop_database(name)


__all__ = ["PG_PACKAGE", "PG_PASSWORD", "ROLE", "PgServer", "PostgresMissing", "fresh_database", "free_port",
           "pg_bindir", "running_server"]
