"""The provider simulator as a server: the aiohttp application, its routes, start/stop on a loopback port (docs/provider.md, The simulator)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from gatewayd.provider.simulator.control import ControlApi
from gatewayd.provider.simulator.model import API_PREFIX, MAX_FILE_BYTES, TOKEN_PATH

log = structlog.get_logger(__name__)

__all__ = ["ProviderSimulator", "run_simulator"]


# The client's placeholder names -> the handlers' match_info names.
_ROUTE_NAMES = {"client_id": "cid", "extension_id": "eid", "fax_id": "fid", "uuid": "uuid"}


def route_path(template: str) -> str:
    """A client path template as an aiohttp route (``{extension_id}`` -> ``{eid}``)."""
    return re.sub(r"\{(\w+)\}", lambda m: "{" + _ROUTE_NAMES[m.group(1)] + "}", template)


class ProviderSimulator(ControlApi):
    """The provider's API for one client account (id 12) on 127.0.0.1."""

    # ---------------------------------------------------------------- server
    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(
            middlewares=[self._fault_middleware, self._api_middleware],
            # Above the provider's limit, so an oversize upload gets the
            # provider's JSON answer instead of aiohttp's bare 413.
            client_max_size=4 * MAX_FILE_BYTES,
        )
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        bound = self._runner.addresses
        assert bound
        self._host, self._port = host, int(bound[0][1])
        log.info("simulator.started", url=self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> ProviderSimulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _routes(self, app: web.Application) -> None:
        r = app.router
        p = API_PREFIX
        r.add_post(TOKEN_PATH, self._h_token)
        routes = (
            ("GET", "user", self._h_user),
            ("GET", "extensions", self._h_extensions),
            ("GET", "extension", self._h_extension),
            ("GET", "fax_mailto", self._h_get_mailto),
            ("PUT", "fax_mailto", self._h_put_mailto),
            ("POST", "fax_out", self._h_send),
            ("GET", "fax_out", self._h_list_sent),
            ("GET", "fax_out_one", self._h_get_sent),
            ("PUT", "fax_out_one", self._h_action),
            ("GET", "fax_in", self._h_list_received),
            ("GET", "fax_in_one", self._h_download),
            ("DELETE", "fax_in_one", self._h_delete_received),
        )
        for method, key, handler in routes:
            r.add_route(method, p + route_path(self.paths[key]), handler)
        r.add_post("/_sim/inbound", self._c_inbound)
        r.add_get("/_sim/sent", self._c_sent)
        r.add_get("/_sim/received", self._c_received)
        r.add_get("/_sim/faults", self._c_faults)
        r.add_post("/_sim/faults", self._c_add_fault)
        r.add_delete("/_sim/faults", self._c_clear_faults)
        r.add_get("/_sim/outcomes", self._c_outcomes)
        r.add_post("/_sim/outcomes", self._c_set_outcome)
        r.add_post("/_sim/reset", self._c_reset)
        r.add_post("/_sim/next_fax_id", self._c_next_fax_id)
        r.add_get("/_sim/received/deleted", self._c_deleted)
        r.add_post("/_sim/clock", self._c_clock)
        r.add_post("/_sim/expire_tokens", self._c_expire_tokens)
        r.add_post("/_sim/extensions", self._c_add_extension)
        r.add_get("/_sim/requests", self._c_requests)


@contextlib.asynccontextmanager
async def run_simulator(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> AsyncIterator[ProviderSimulator]:
    """``async with run_simulator(**kw) as sim:`` - a started simulator."""
    sim = ProviderSimulator(**kw)
    await sim.start(host, port)
    try:
        yield sim
    finally:
        await sim.stop()
