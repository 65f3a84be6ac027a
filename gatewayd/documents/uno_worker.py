"""The LibreOffice side of the office converter: starts one headless soffice and converts files to PDF over UNO.

Run by the Python that has Debian's ``uno`` module (``documents.office_python``),
inside the sandbox ``gatewayd/documents/office.py`` builds (its own
profile, no network, a memory limit); it imports nothing from gatewayd.
Protocol on stdin/stdout, one JSON object a line: it prints
``{"ready": true}`` once soffice answers, then for each request
``{"in": path, "out": path}`` prints ``{"ok": true, "pages": n}`` or
``{"ok": false, "error": words}`` (with ``"dead": true``, and exits, when
soffice itself has died). It ends when stdin closes.
The load properties follow what unoserver (PyPI) does, plus the sandbox
ones: macros never run, links are never updated (docs/documents.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import uno  # type: ignore[import-not-found]
from com.sun.star.beans import PropertyValue  # type: ignore[import-not-found]
from com.sun.star.connection import NoConnectException  # type: ignore[import-not-found]
from com.sun.star.lang import DisposedException  # type: ignore[import-not-found]

# com.sun.star.document.MacroExecMode.NEVER_EXECUTE, UpdateDocMode.NO_UPDATE
NEVER_EXECUTE = 0
NO_UPDATE = 0

_EXPORT_FILTERS = (
    ("com.sun.star.text.WebDocument", "writer_web_pdf_Export"),
    ("com.sun.star.text.GenericTextDocument", "writer_pdf_Export"),
    ("com.sun.star.sheet.SpreadsheetDocument", "calc_pdf_Export"),
    ("com.sun.star.presentation.PresentationDocument", "impress_pdf_Export"),
    ("com.sun.star.drawing.DrawingDocument", "draw_pdf_Export"),
)


def _props(**values: object) -> tuple[PropertyValue, ...]:
    out = []
    for name, value in values.items():
        prop = PropertyValue()
        prop.Name = name
        prop.Value = value
        out.append(prop)
    return tuple(out)


def _reply(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    soffice, profile, pipe = sys.argv[1], sys.argv[2], sys.argv[3]
    office = subprocess.Popen(
        [soffice, "--headless", "--invisible", "--nologo", "--norestore", "--nodefault", "--nolockcheck",
         "--nofirststartwizard", f"-env:UserInstallation={uno.systemPathToFileUrl(profile)}",
         f"--accept=pipe,name={pipe};urp;StarOffice.ComponentContext"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    parent = os.getppid()
    try:
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
        deadline = time.monotonic() + 120
        while True:
            try:
                ctx = resolver.resolve(f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext")
                break
            except NoConnectException:
                if os.getppid() != parent:
                    return 1  # gatewayd is gone
                if office.poll() is not None or time.monotonic() > deadline:
                    _reply({"ready": False, "error": "LibreOffice did not start"})
                    return 1
                time.sleep(0.1)
        desktop = ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
        return _serve(desktop, office)
    finally:
        # However this ends (stdin closed because gatewayd is gone, a broken
        # pipe, a failed start), soffice must not outlive it. It is
        # oosplash's child, not ours: the process group (this worker leads
        # it) goes, with us.
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _serve(desktop: object, office: subprocess.Popen[bytes]) -> int:
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            pages = convert(desktop, request["in"], request["out"])
        except Exception as exc:
            if isinstance(exc, DisposedException) or office.poll() is not None:
                # soffice itself is gone (crashed, out of memory; the bridge
                # to it is disposed before its process is reaped): so are we.
                _reply({"ok": False, "dead": True, "error": _words(exc)})
                return 1
            _reply({"ok": False, "error": _words(exc)})
        else:
            _reply({"ok": True, "pages": pages})
    try:
        desktop.terminate()  # type: ignore[attr-defined]
    except Exception:
        pass
    try:
        office.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return 0


def convert(desktop: object, src: str, dst: str) -> int:
    load = _props(Hidden=True, ReadOnly=True, MacroExecutionMode=NEVER_EXECUTE, UpdateDocMode=NO_UPDATE,
                  Silent=True)
    doc = desktop.loadComponentFromURL(uno.systemPathToFileUrl(src), "_blank", 0, load)  # type: ignore[attr-defined]
    if doc is None:
        raise ValueError("not a document LibreOffice can open")
    try:
        name = next((f for service, f in _EXPORT_FILTERS if doc.supportsService(service)), None)
        if name is None:
            raise ValueError("not a document LibreOffice can print")
        doc.storeToURL(uno.systemPathToFileUrl(dst), _props(FilterName=name))
        if not os.path.exists(dst) or os.path.getsize(dst) == 0:
            raise ValueError("LibreOffice made no pages")
        return 0
    finally:
        doc.close(True)


def _words(exc: Exception) -> str:
    text = getattr(exc, "Message", "") or str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


if __name__ == "__main__":
    sys.exit(main())
