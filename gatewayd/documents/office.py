"""Office documents to PDF: a pool of warm, sandboxed LibreOffice converters.

docs/documents.md, "Office documents". Each converter is one headless
soffice driven by ``uno_worker.py`` (run by the Python that has Debian's
``uno`` module), started once and reused, so a document costs a fraction
of a cold ``soffice --convert-to`` (docs/performance.md). The sandbox:

- its own fresh profile directory, with macros disabled and untrusted
  links blocked (``registrymodifications.xcu`` below); documents are
  opened with macros never executed and links never updated;
- no network at all: the process tree runs in its own network namespace
  (``unshare --net --map-root-user``), talking UNO over a unix socket;
- a memory limit (RLIMIT_AS on the whole tree) and a time limit per
  document: a converter that overruns it, or dies, is killed with its
  process group and replaced, and the document is refused with the reason.

At most ``concurrency`` documents convert at once, one per converter; the
rest wait. Everything here is asyncio subprocess I/O: the event loop (and
the SMTP listener on it) never waits for LibreOffice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gatewayd.config import DocumentsConfig
from gatewayd.logs import get_logger

__all__ = ["OfficeConverter", "OfficeFailed", "OfficeSettings", "office_problem", "office_settings", "office_unavailable"]

log = get_logger(__name__)

WORKER = Path(__file__).with_name("uno_worker.py")
START_TIMEOUT = 120.0  # a cold soffice with a new profile, on a loaded machine
_SANDBOX = ("unshare", "--net", "--map-root-user")

# The profile's settings (LibreOffice's registry, docs/documents.md): macros
# off at the highest security level, links from untrusted documents blocked,
# no first-run wizard, no lock files.
_REGISTRY = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="BlockUntrustedRefererLinks" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="UseLocking" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="FirstRun" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Save/Document"><prop oor:name="LoadPrinter" oor:op="fuse"><value>false</value></prop></item>
</oor:items>
"""


@dataclass(frozen=True)
class OfficeSettings:
    soffice: str = "soffice"
    python: str = "/usr/bin/python3"
    timeout: float = 60.0
    memory_bytes: int = 2048 * 1024 * 1024
    concurrency: int = 2
    work_dir: Path | None = None  # None: a private temporary directory


def office_settings(documents: DocumentsConfig, work_dir: Path | None = None) -> OfficeSettings:
    """The converter's settings from ``[documents]`` (docs/configuration.md)."""
    return OfficeSettings(timeout=documents.convert_timeout, memory_bytes=documents.convert_memory,
                          concurrency=documents.office_concurrency, work_dir=work_dir)


class OfficeFailed(Exception):
    """A document LibreOffice could not make into pages; ``why`` words it for the sender."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def office_problem(settings: OfficeSettings) -> str | None:
    """Why office documents cannot be converted on this machine, or None (``check-config``, the daemon's start)."""
    if shutil.which(settings.soffice) is None:
        return f"LibreOffice ({settings.soffice}) is not installed (Debian: libreoffice-writer-nogui, -calc-nogui, -impress-nogui)"
    if shutil.which(settings.python) is None:
        return f"{settings.python} not found (it runs the LibreOffice converter)"
    probe = subprocess.run([settings.python, "-c", "import uno"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"{settings.python} cannot import uno (Debian: python3-uno)"
    sandbox = subprocess.run([*_SANDBOX, "true"], capture_output=True, timeout=30, check=False)
    if sandbox.returncode != 0:
        why = sandbox.stderr.decode("utf-8", "replace").strip()[:200]
        return f"cannot make the converter's network sandbox (unshare --net --map-root-user: {why})"
    return None


def office_unavailable(documents: DocumentsConfig) -> str:
    """Why office documents are not converted on this machine, or "" when they are.

    The one decision: the daemon's (``build_office``, for its intakes and
    console) and ``gatewayd send``'s. It only looks for LibreOffice, never starts it.
    """
    if not documents.office:
        return "office documents are not converted on this gateway (documents.office = false)"
    return office_problem(office_settings(documents)) or ""


class _Converter:
    """One sandboxed soffice with its UNO worker; dead after any timeout or crash."""

    def __init__(self, settings: OfficeSettings, root: Path, number: int) -> None:
        self.settings = settings
        self.dir = Path(tempfile.mkdtemp(prefix=f"office{number}-", dir=root))
        self.proc: asyncio.subprocess.Process | None = None
        self.conversions = 0
        self.dead = False  # killed (or being killed): never used again

    async def start(self) -> None:
        profile = self.dir / "profile"
        (profile / "user").mkdir(parents=True)
        (profile / "user" / "registrymodifications.xcu").write_text(_REGISTRY, encoding="utf-8")
        limit = self.settings.memory_bytes

        def limits() -> None:  # in the child, before exec: the whole tree inherits it
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        self.proc = await asyncio.create_subprocess_exec(
            *_SANDBOX, self.settings.python, str(WORKER), self.settings.soffice, str(profile), f"gatewayd{os.getpid()}{id(self)}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=limits, cwd=self.dir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8"},
        )
        answer = await self._answer(START_TIMEOUT, "LibreOffice did not start in time")
        if not answer.get("ready"):
            await self.kill()
            raise OfficeFailed(str(answer.get("error") or "LibreOffice did not start"))

    async def convert(self, data: bytes, kind: str) -> bytes:
        assert self.proc is not None and self.proc.stdin is not None
        self.conversions += 1
        src = self.dir / f"in{self.conversions}.{kind}"
        dst = self.dir / f"out{self.conversions}.pdf"
        src.write_bytes(data)
        try:
            self.proc.stdin.write(json.dumps({"in": str(src), "out": str(dst)}).encode() + b"\n")
            await self.proc.stdin.drain()
            answer = await self._answer(self.settings.timeout, f"conversion took longer than {self.settings.timeout:g} seconds")
            if answer.get("dead"):
                await self.kill()
                raise OfficeFailed("the converter stopped (out of memory or crashed)")
            if not answer.get("ok"):
                raise OfficeFailed(f"LibreOffice cannot convert it ({answer.get('error') or 'no reason given'})")
            return dst.read_bytes()
        except (BrokenPipeError, ConnectionResetError):
            await self.kill()
            raise OfficeFailed("the converter stopped (out of memory or crashed)") from None
        except asyncio.CancelledError:
            # Its answer would come to the next request: this converter is done.
            self._signal_group()
            raise
        finally:
            for path in (src, dst):
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _answer(self, timeout: float, late: str) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            await self.kill()
            raise OfficeFailed(late) from None
        if not line:
            await self.kill()
            raise OfficeFailed("the converter stopped (out of memory or crashed)")
        try:
            answer = json.loads(line)
        except ValueError:
            await self.kill()
            raise OfficeFailed("the converter answered nonsense") from None
        return answer if isinstance(answer, dict) else {}

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc is not None and self.proc.returncode is None

    def _signal_group(self) -> None:
        self.dead = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """The whole process group (worker, soffice and anything it started), then the files."""
        self._signal_group()
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)


class OfficeConverter:
    """``convert`` office bytes to PDF bytes with a bounded pool of warm converters.

    Lazy: the first ``convert`` (or ``warm``) starts the first soffice; one
    that hangs or dies is killed and the next document starts another.
    """

    def __init__(self, settings: OfficeSettings) -> None:
        if settings.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        # Made with the first converter: nothing of LibreOffice's (process or
        # directory) exists until an office document needs it.
        self._root: Path | None = None
        self._idle: list[_Converter] = []
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._started = 0
        self._busy: set[_Converter] = set()
        self._all: set[_Converter] = set()  # every converter not yet killed, starting ones too
        self._closed = False

    async def warm(self) -> None:
        """Start one converter now, so the first document does not wait for LibreOffice to start.

        One, not ``concurrency``: a gateway that seldom gets office documents
        keeps one soffice, not several; more start when documents come together.
        """
        async with self._slots:
            if not self._idle and not self._busy:
                self._idle.append(await self._new())

    async def _new(self) -> _Converter:
        self._started += 1
        number = self._started
        if self._closed:
            raise OfficeFailed("the converter is shutting down")
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="gatewayd-office-", dir=self.settings.work_dir))
        converter = _Converter(self.settings, self._root, number)
        self._all.add(converter)
        try:
            await converter.start()
        except BaseException:
            self._all.discard(converter)
            await converter.kill()
            raise
        log.info("office_converter_started", number=number)
        return converter

    async def convert(self, data: bytes, kind: str) -> bytes:
        """The PDF LibreOffice makes of ``data`` (an office kind); ``OfficeFailed`` with the reason."""
        async with self._slots:
            converter = self._idle.pop() if self._idle else await self._new()
            self._busy.add(converter)
            try:
                return await converter.convert(data, kind)
            finally:
                self._busy.discard(converter)
                if converter.alive:
                    self._idle.append(converter)
                else:
                    log.warning("office_converter_replaced")
                    self._all.discard(converter)
                    await converter.kill()

    async def aclose(self) -> None:
        self._closed = True
        for converter in list(self._all):
            converter._signal_group()  # at once, even one still starting
        for converter in list(self._all):
            await converter.kill()
        self._all.clear()
        self._idle.clear()
        if self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, True)
