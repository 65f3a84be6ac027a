"""``gatewayd simulator``: run the provider simulator until cancelled and print how to reach it (docs/operations.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from typing import Any

from gatewayd.provider.simulator.app import ProviderSimulator

__all__ = ["main_simulator", "parse_listen"]


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" or "[IPv6]:PORT" -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def main_simulator(
    listen: str = "127.0.0.1:8080",
    client_id: str = "demo",
    client_secret: str = "demo",
    *,
    out: Any = None,
    **kw: Any,
) -> None:
    """Run the simulator until cancelled (``gatewayd simulator``)."""
    out = out or sys.stdout
    host, port = parse_listen(listen)
    if not _is_loopback(host):
        print(f"warning: the simulator has no real security and its control API is "
              f"unauthenticated; listening on {host}", file=sys.stderr)
    sim = ProviderSimulator(client_id, client_secret, **kw)
    await sim.start(host, port)
    try:
        lines = [
            f"provider simulator listening on {sim.url}",
            f"  base_url      = {sim.base_url}",
            f"  token_url     = {sim.token_url}",
            f"  client_id     = {client_id}",
            f"  client_secret = {client_secret}",
            f"  control API   = {sim.url}/_sim/  (sent, received, faults, outcomes, reset, clock)",
            "  fax extensions: " + ", ".join(
                f"{e.id} ({e.name})" for e in sorted(sim.extensions.values(), key=lambda e: e.id) if e.type == "fax"
            ),
        ]
        lines += [f"  path {k} served at {v} (overridden)" for k, v in sorted((kw.get("paths") or {}).items())]
        print("\n".join(lines), file=out, flush=True)
        await asyncio.Event().wait()
    finally:
        await sim.stop()
