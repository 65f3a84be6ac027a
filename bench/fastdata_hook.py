"""The proposed hook of gatewayd.email_to_fax.fastdata into the SMTP listener,
applied from outside so the benchmarks (and tests/reliability) can measure it
before it is merged into gatewayd/email_to_fax/smtp.py.

What it does is exactly what docs/performance.md asks of smtp.py:

1. ``FaxSMTP._read_data`` reads DATA with ``fastdata.read_data`` (64-256 KiB
   pieces, streaming un-stuffing, spool to an anonymous file in the state
   directory past ``SPOOL_THRESHOLD``).
2. ``_Decisions.data`` loads the body and runs the intake inside an
   ``IntakeGate`` (at most ``GATE_BUDGET`` bytes of message being parsed and
   converted at once); a spool that could not be written answers 451.

Run the daemon with it: ``python bench/fastdata_hook.py run -c CONFIG``
(same arguments as ``gatewayd``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from gatewayd.email_to_fax import smtp
from gatewayd.email_to_fax.fastdata import DataBody, IntakeGate, read_data
from gatewayd.logs import get_logger

log = get_logger("gatewayd.email_to_fax.smtp")

SPOOL_THRESHOLD = 1 << 20  # bodies above 1 MiB wait on disk, not in memory
# Bytes of raw message parsed/converted at once (each costs ~6-10x its size in
# RSS while parsed). Override for experiments with $GATEWAYD_GATE_BUDGET.
GATE_BUDGET = int(os.environ.get("GATEWAYD_GATE_BUDGET", 16 << 20))

_installed: tuple[object, object] | None = None


@dataclass(frozen=True)
class BodyResult(smtp.DataResult):
    """``DataResult`` plus the body as ``read_data`` left it (memory or spool)."""

    body: DataBody | None = None


async def _read_data(self: smtp.FaxSMTP) -> smtp.DataResult:
    tuning = self.listener.tuning
    body = await read_data(
        self._reader,
        limit=self.data_size_limit or 0,
        spool_threshold=SPOOL_THRESHOLD,
        spool_dir=self.listener.rt.store.state_dir,
        on_activity=lambda: self._reset_timeout(tuning.data_timeout),
    )
    self._reset_timeout()
    return BodyResult(None, body.size, body.too_big, body.bare_lf, body)


def _gate(listener: Any) -> IntakeGate:
    gate = getattr(listener, "_intake_gate", None)
    if gate is None:
        gate = listener._intake_gate = IntakeGate(GATE_BUDGET)
    return gate


def install() -> None:
    """Patch the listener classes (idempotent)."""
    global _installed
    if _installed is not None:
        return
    original = smtp._Decisions.data
    _installed = (original, smtp.FaxSMTP._read_data)

    async def data(self: Any, server: Any, envelope: Any, result: smtp.DataResult) -> str:
        body = getattr(result, "body", None)
        if body is None:
            return await original(self, server, envelope, result)
        try:
            if result.too_big or result.bare_lf:
                return await original(self, server, envelope, smtp.DataResult(None, result.size, result.too_big, result.bare_lf))
            if body.error is not None:
                log.error("smtp_spool_failed", peer=server.peer_ip, error=str(body.error))
                return smtp.TEMPORARY
            async with _gate(self.listener).hold(body.size):
                raw = await body.aread()
                return await original(self, server, envelope, smtp.DataResult(raw, result.size, False, False))
        except Exception as exc:  # noqa: BLE001 - never a 500
            log.exception("smtp_hook_failed", hook="data", error=f"{type(exc).__name__}: {exc}")
            return smtp.TEMPORARY
        finally:
            body.close()

    data.__name__ = "data"
    smtp._Decisions.data = data  # type: ignore[method-assign]
    smtp.FaxSMTP._read_data = _read_data  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo ``install`` (tests that apply the hook in-process)."""
    global _installed
    if _installed is None:
        return
    smtp._Decisions.data, smtp.FaxSMTP._read_data = _installed  # type: ignore[method-assign]
    _installed = None


if __name__ == "__main__":
    install()
    from gatewayd.cli import main

    raise SystemExit(main(sys.argv[1:]))
