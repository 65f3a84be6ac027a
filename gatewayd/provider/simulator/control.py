"""The provider simulator's control API under /_sim/: inject faxes and faults, set outcomes, move the clock, read the logs (docs/provider.md, Control API)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gatewayd.provider.simulator.handlers import ApiHandlers, json_error

__all__ = ["ControlApi"]


class ControlApi(ApiHandlers):
    """The unauthenticated ``/_sim/`` control API for the demo and tests."""

    def sent_summary(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id, "extension_id": r.extension_id, "dst_num": r.dst_num,
                "filename": r.filename, "sha256": r.sha256, "size": r.size, "kind": r.kind,
                "pages": r.pages, "status": r.status, "attempt": r.attempt,
                "created": self._fmt(r.created),
                "history": [{"status": s, "datetime": self._fmt(t)} for s, t in r.history],
            }
            for r in self.sent_faxes()
        ]

    async def _c_inbound(self, request: web.Request) -> web.Response:
        try:
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                upload = form.get("file")
                if not isinstance(upload, web.FileField):
                    return json_error(400, "file is required")
                data = upload.file.read()
                fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            else:
                fields = await request.json()
                if not isinstance(fields, dict):
                    raise ValueError("a JSON object is required")
                data = base64.b64decode(fields.get("data_base64", ""), validate=True)
            if not data:
                return json_error(400, "the fax file is empty")
            ext_id = int(fields.get("extension_id") or self._first_fax_extension())
            when = self._parse_dt(fields["datetime"]) if fields.get("datetime") else None
            kw = {k: str(fields[k]) for k in ("caller_id", "destination") if fields.get(k)}
            uuid = self.inject_received(ext_id, data, when=when, content_type=fields.get("content_type") or None, **kw)
        except (ValueError, KeyError, binascii.Error) as exc:
            return json_error(400, f"bad inbound fax: {exc}")
        return web.json_response({"uuid": uuid, "extension_id": ext_id}, status=201)

    def _first_fax_extension(self) -> int:
        return min(e.id for e in self.extensions.values() if e.type == "fax")

    async def _c_sent(self, request: web.Request) -> web.Response:
        return web.json_response(self.sent_summary())

    async def _c_received(self, request: web.Request) -> web.Response:
        return web.json_response([self._received_json(r) for r in self.received_faxes()])

    async def _c_faults(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(f) for f in self.faults])

    async def _c_add_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            allowed = {"path", "method", "count", "status", "message", "latency", "answer_latency", "drop",
                       "commit_then_drop", "rate_limit_reset"}
            if not isinstance(body, dict) or set(body) - allowed:
                raise ValueError(f"fields allowed: {sorted(allowed)}")
            fault = self.add_fault(**body)
        except (ValueError, TypeError) as exc:
            return json_error(400, f"bad fault: {exc}")
        return web.json_response(asdict(fault), status=201)

    async def _c_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)

    async def _c_outcomes(self, request: web.Request) -> web.Response:
        return web.json_response(self.outcomes)

    async def _c_set_outcome(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.set_outcome(str(body["dst_num"]), body["outcomes"])
        except (ValueError, TypeError, KeyError) as exc:
            return json_error(400, f"bad outcome: {exc}")
        return web.json_response(self.outcomes)

    async def _c_next_fax_id(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.set_next_fax_id(body["id"])
        except (ValueError, TypeError, KeyError) as exc:
            return json_error(400, f"bad next fax id: {exc}")
        return web.json_response({"next_fax_id": self._next_fax_id})

    async def _c_deleted(self, request: web.Request) -> web.Response:
        return web.json_response(self.deleted_received)

    async def _c_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)

    async def _c_clock(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.clock.advance(float(body.get("advance", 0)))
        except (ValueError, TypeError, AttributeError) as exc:
            return json_error(400, f"bad clock request: {exc}")
        self.tick()
        return web.json_response({"now": self.clock.now(), "datetime": self._fmt(self._now_dt())})

    async def _c_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return web.Response(status=204)

    async def _c_add_extension(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ext = self.add_extension(
                int(body["id"]), type=body.get("type", "fax"), fax_mailto=body.get("fax_mailto"),
                status=body.get("status", "active"), name=body.get("name"), label=body.get("label"),
                extension_group_id=body.get("extension_group_id"),
            )
        except (ValueError, TypeError, KeyError) as exc:
            return json_error(400, f"bad extension: {exc}")
        return web.json_response({**self._ext_json(ext), "fax_mailto": ext.fax_mailto}, status=201)

    async def _c_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r._asdict() for r in self.request_log])
