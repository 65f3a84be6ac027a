"""sd_notify written directly against ``$NOTIFY_SOCKET`` (no libsystemd).

Supports filesystem (``/run/systemd/notify``) and abstract (``@name``)
datagram sockets. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op. Messages are the newline-separated ``KEY=value`` assignments of
sd_notify(3): ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1``,
``STATUS=...``.

A send never blocks the event loop: the socket is non-blocking, and a
message the manager cannot take right now is dropped with a warning (the
next status or watchdog ping follows soon).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from gatewayd.logs import get_logger

log = get_logger(__name__)

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, address: str | None, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> None:
        if address and not (address.startswith("/") or address.startswith("@")):
            log.warning("sd_notify_unsupported_address", address=address)
            address = None
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self.sent = 0  # messages handed to the manager (for tests and debugging)
        self.failed = 0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """Read ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``.

        With the process environment (``env`` None) and ``unset``, the
        variables are removed from it, like sd_notify's ``unset_environment``:
        helper programs (ghostscript, qpdf) must not inherit the socket.
        """
        source: Mapping[str, str] = os.environ if env is None else env
        usec = source.get("WATCHDOG_USEC", "")
        pid = source.get("WATCHDOG_PID", "")
        notifier = cls(
            source.get("NOTIFY_SOCKET") or None,
            watchdog_usec=int(usec) if usec.isdigit() and int(usec) > 0 else None,
            watchdog_pid=int(pid) if pid.isdigit() else None,
        )
        if env is None and unset:
            environ: MutableMapping[str, str] = os.environ
            for name in NOTIFY_VARIABLES:
                environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def watchdog_interval(self) -> float | None:
        """Half the watchdog period, as systemd recommends; None when off.

        Off also when ``WATCHDOG_PID`` names another process (the variable
        was inherited, not meant for us) or there is no socket to ping.
        """
        if not self.watchdog_usec or not self.address:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2_000_000

    def _socket_address(self) -> str:
        assert self.address
        if self.address.startswith("@"):
            return "\0" + self.address[1:]  # abstract namespace
        return self.address

    def notify(self, *lines: str) -> bool:
        """Send one message made of ``lines``; True when the manager got it."""
        if not self.address:
            return False
        clean = [line.replace("\n", " ") for line in lines if line]
        payload = "\n".join(clean).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.connect(self._socket_address())
                sock.send(payload)
        except OSError as exc:  # gone, full (EAGAIN), refused: never fatal
            self.failed += 1
            log.warning("sd_notify_failed", error=str(exc), message=clean[0] if clean else "")
            return False
        self.sent += 1
        return True

    # The messages gatewayd sends, by name.

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", f"STATUS={status}" if status else "")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) match the
        # READY=1 that ends this reload; older versions ignore it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self, status: str = "") -> bool:
        return self.notify("WATCHDOG=1", f"STATUS={status}" if status else "")
