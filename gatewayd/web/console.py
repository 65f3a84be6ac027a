"""Service "web": the web console on ``[web].listen`` (aiohttp, server-rendered Jinja2 pages; docs/web.md).

Pages: /login, /logout, /jobs, /jobs/<id>, /send, /received,
/received/<uuid>, /admin. Every page works without JavaScript; one small
local script refreshes a job's status. Security (docs/web.md, Security):
sessions in the store, cookie HttpOnly + SameSite=Strict (+ Secure under
TLS), a CSRF token on every POST, throttled logins, a strict
Content-Security-Policy, documents served ``no-store`` as attachments or
inline with ``Content-Disposition``, and every object looked up through the
logged-in account's scope (another account's job or fax: 404).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from multidict import MultiDictProxy  # aiohttp's own dependency: the type of request.post()

from gatewayd import jobcontrol
from gatewayd.config import is_email_address
from gatewayd.documents.preview import PreviewError, Previews, email_preview
from gatewayd.email_to_fax.errors import IntakeRefused
from gatewayd.email_to_fax.intake import Intake, attachment_from_bytes
from gatewayd.email_to_fax.parse import ParsedMessage
from gatewayd.email_to_fax.policy import NumberPolicy, SenderPolicy
from gatewayd.fax_to_email.message import FaxAttachment, FaxFacts, attachment_name, build_received_email
from gatewayd.jobstates import FAILED, JOB_STATES
from gatewayd.logs import get_logger
from gatewayd.mail.compose import to_bytes
from gatewayd.provider.client import ProviderClient
from gatewayd.runtime import Runtime
from gatewayd.store import Job, ReceivedFax, StoreError
from gatewayd.web.accounts import Account, LoginThrottle, check_login, find_account
from gatewayd.web.received_files import ReceivedFileMissing, received_pdf

log = get_logger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "gatewayd_session"
LOGIN_COOKIE = "gatewayd_login"
PAGE = 50
PREVIEW_WIDTH = 600
THUMB_WIDTH = 160
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What the session middleware (``_session``) leaves on each request for the
# pages: typed keys, as aiohttp asks (a string key warns, NotAppKeyWarning;
# web.RequestKey needs aiohttp 3.14, the floor in pyproject.toml).
ACCOUNT = web.RequestKey[Account | None]("account")  # None: not logged in
CSRF = web.RequestKey[str]("csrf")  # the session's form token ("" without one)
SESSION_HASH = web.RequestKey[str]("session_hash")  # only when logged in
FORM = web.RequestKey[MultiDictProxy[str | bytes | bytearray | web.FileField]]("form")  # a POST whose token matched


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


class WebConsole:
    """Service "web"."""

    name = "web"

    def __init__(self, rt: Runtime, *, provider_factory: Callable[[], Any] | None = None, office: bool = False) -> None:
        """``office``: LibreOffice is there (daemon.build_services decides, as for the SMTP intake)."""
        self.rt = rt
        self.previews = Previews(rt.config.state_dir)
        self.throttle = LoginThrottle()
        self.intake = Intake(rt, office=office)
        # Cancel and retry talk to the provider with a client of their own
        # (as `gatewayd cancel` does): the daemon's client is shared with
        # the sender and tracker and replaced on reload.
        self.provider_factory = provider_factory or (lambda: ProviderClient.from_config(self.rt.config.provider))
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = when
        self._static = {name: (HERE / "static" / name).read_bytes() for name in ("console.css", "job.js")}

    @property
    def tls(self) -> bool:
        return bool(self.rt.config.web.tls_cert)

    # ------------------------------------------------------------ service

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers, self._session],
            client_max_size=self.rt.config.smtp.max_message_size,
        )
        r = app.router
        job = r"/jobs/{id:\d{1,18}}"
        fax = r"/received/{uuid:[A-Za-z0-9._-]{1,100}}"
        r.add_get("/", self.index)
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/jobs", self.jobs)
        r.add_get(job, self.job)
        r.add_get(job + "/status.json", self.job_status)
        r.add_get(job + "/document.pdf", self.job_pdf)
        r.add_get(job + "/preview.png", self.job_preview)
        r.add_post(job + "/retry", self.job_retry)
        r.add_post(job + "/cancel", self.job_cancel)
        r.add_get("/send", self.send_form)
        r.add_post("/send", self.send)
        r.add_get("/received", self.received)
        r.add_get(fax, self.received_one)
        r.add_get(fax + "/document.pdf", self.received_pdf)
        r.add_get(fax + "/preview.png", self.received_preview)
        r.add_post(fax + "/email", self.received_email)
        r.add_get("/admin", self.admin)
        r.add_get("/static/{name}", self.static)
        return app

    async def start(self) -> None:
        cfg = self.rt.config.web
        assert cfg.listen is not None
        ctx = None
        if cfg.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen.host, cfg.listen.port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except OSError:
            self.rt.health.listener("web", False)
            await self._runner.cleanup()
            self._runner = None
            raise
        bound = self._runner.addresses  # port 0 in the configuration resolved
        self.port = int(bound[0][1]) if bound else cfg.listen.port
        self.rt.health.listener("web", True)
        log.info("web_listening", address=f"{cfg.listen.host}:{self.port}", tls=bool(ctx))

    async def run(self) -> None:
        await self.rt.stopping.wait()

    async def stop(self) -> None:
        self.rt.health.listener("web", False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --------------------------------------------------------- middleware

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect: raised on to aiohttp with the headers below
                self._secure(exc.headers)
                raise
            text = exc.text or ""
            message = exc.reason if text.startswith(f"{exc.status}:") or not text else text
            response = self._page(request, "error.html", status=exc.status, message=message)
        except Exception:
            log.exception("web_request_failed", path=request.path)
            response = self._page(request, "error.html", status=500, message="Something went wrong; the details are in the gateway's log.")
        self._secure(response.headers)
        return response

    def _secure(self, h: MutableMapping[str, str]) -> None:
        """The headers every answer carries (docs/web.md)."""
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h.setdefault("Cache-Control", "no-store")
        if self.tls:
            h["Strict-Transport-Security"] = "max-age=31536000"

    @web.middleware
    async def _session(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[ACCOUNT] = None
        request[CSRF] = ""
        token = request.cookies.get(SESSION_COOKIE, "")
        if token:
            store = self.rt.store
            session = await store.run(store.get_session, _hash(token))
            if session is not None:
                account = find_account(self.rt.config, session.account)
                if account is not None:  # removed by a reload: logged out
                    request[ACCOUNT] = account
                    request[CSRF] = session.csrf
                    request[SESSION_HASH] = session.token_hash
        public = request.path in ("/login",) or request.path.startswith("/static/")
        if request[ACCOUNT] is None and not public:
            if request.method == "POST":
                raise web.HTTPForbidden(text="Not logged in (or the session ended): log in again.")
            raise web.HTTPSeeOther("/login")
        if request.method == "POST" and request.path != "/login":
            form = await request.post()
            sent = form.get("csrf", "")
            if not isinstance(sent, str) or not hmac.compare_digest(sent, request[CSRF]):
                raise web.HTTPForbidden(text="The form's security token is missing or wrong: reload the page and try again.")
            request[FORM] = form
        return await handler(request)

    # ------------------------------------------------------------ helpers

    def _page(self, request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(template).render(
            account=request.get(ACCOUNT), csrf=request.get(CSRF, ""), path=request.path, **context,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def _account(self, request: web.Request) -> Account:
        account = request[ACCOUNT]
        if account is None:  # _session lets no such request reach a page; were one to, it is not logged in
            raise web.HTTPSeeOther("/login")
        return account

    async def _job(self, request: web.Request) -> Job:
        store = self.rt.store
        job = await store.run(store.web_job, self._account(request).jobs, int(request.match_info["id"]))
        if job is None:
            raise web.HTTPNotFound()
        return job

    async def _fax(self, request: web.Request) -> ReceivedFax:
        store = self.rt.store
        fax = await store.run(store.web_received_one, self._account(request).received, request.match_info["uuid"])
        if fax is None:
            raise web.HTTPNotFound()
        return fax

    @staticmethod
    def _document(data: bytes, filename: str, content_type: str, *, inline: bool = True) -> web.Response:
        how = "inline" if inline else "attachment"
        return web.Response(body=data, content_type=content_type, headers={
            "Cache-Control": "no-store",
            "Content-Disposition": f'{how}; filename="{filename}"',
        })

    # ------------------------------------------------------------- login

    async def index(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/jobs")

    def _login_page(self, request: web.Request, *, status: int = 200, error: str = "", username: str = "") -> web.Response:
        # One token per browser (kept while its cookie lives): two login
        # pages open at once, or a page loaded twice, stay valid.
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", token):
            token = secrets.token_urlsafe(24)
        response = self._page(request, "login.html", status=status, login_token=token, error=error, username=username)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=self.tls, path="/login")
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        if request[ACCOUNT] is not None:
            raise web.HTTPSeeOther("/jobs")
        return self._login_page(request)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        username = str(form.get("username", ""))[:200]
        password = str(form.get("password", ""))[:1000]
        sent = str(form.get("csrf", ""))
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise web.HTTPForbidden(text="The form's security token is missing or wrong: reload the page and try again.")
        address = request.remote or ""
        wait = self.throttle.blocked_for(address, username)
        if wait > 0:
            minutes = int(wait // 60) + 1
            return self._login_page(request, status=429, username=username,
                                    error=f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}.")
        account = await asyncio.to_thread(check_login, self.rt.config, username, password)
        if account is None:
            self.throttle.failed(address, username)
            log.warning("web_login_failed", account=username, address=address)
            return self._login_page(request, status=401, username=username, error="Wrong user name or password.")
        self.throttle.succeeded(address, username)
        token = secrets.token_urlsafe(32)
        store = self.rt.store
        await store.run(store.create_session, _hash(token), account.name, secrets.token_urlsafe(32), self.rt.config.web.session_lifetime)
        log.info("web_login", account=account.name, address=address)
        response = _redirect("/jobs")
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", secure=self.tls, path="/",
                            max_age=int(self.rt.config.web.session_lifetime))
        response.del_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        store = self.rt.store
        await store.run(store.delete_session, request[SESSION_HASH])
        response = _redirect("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    # -------------------------------------------------------------- jobs

    async def jobs(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        if state not in JOB_STATES:
            state = ""
        number = re.sub(r"[^0-9+*#]", "", request.query.get("number", ""))[:32]
        before_text = request.query.get("before", "")
        before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
        store = self.rt.store
        rows = await store.run(store.web_jobs, self._account(request).jobs, state=state, number=number, before=before, limit=PAGE + 1)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        return self._page(request, "jobs.html", jobs=rows, states=JOB_STATES, state=state, number=number,
                          next_before=rows[-1].id if more and rows else None)

    async def job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        store = self.rt.store
        events = await store.run(store.job_events, job.id)
        return self._page(request, "job.html", job=job, events=events, can_retry=job.state == FAILED,
                          can_cancel=not job.final or job.state == FAILED,
                          notice=request.query.get("notice", "")[:500])

    async def job_status(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        return web.json_response({"state": job.state, "reason": job.reason, "final": job.final}, headers={"Cache-Control": "no-store"})

    async def job_pdf(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        try:
            # Its file, or on PostgreSQL its row: in a thread, off the store's own.
            data = await asyncio.to_thread(self.rt.store.read_document, job.document)
        except StoreError as exc:
            if _document_gone(exc):
                raise web.HTTPNotFound(text="The document of this job is no longer kept.") from None
            raise web.HTTPServiceUnavailable(text="The store does not answer; try again shortly.") from None
        return self._document(data, f"fax-job-{job.id}.pdf", "application/pdf")

    async def job_preview(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        width = THUMB_WIDTH if request.query.get("size") == "thumb" else PREVIEW_WIDTH
        store = self.rt.store
        try:
            png = await self.previews.aget(job.document, width, lambda: store.read_document(job.document))
        except (StoreError, PreviewError):
            raise web.HTTPNotFound(text="No preview for this document.") from None
        return self._document(png, f"fax-job-{job.id}.png", "image/png")

    async def _act(self, request: web.Request, action: Callable[..., Awaitable[str]]) -> web.Response:
        job = await self._job(request)
        by = f"from the web console by {self._account(request).name}"
        try:
            text = await action(self.rt.store, job.id, self.provider_factory, by=by)
        except jobcontrol.ControlRefused as exc:
            text = str(exc)
        self.rt.wake("sender")
        self.rt.wake("tracker")
        raise web.HTTPSeeOther(f"/jobs/{job.id}?notice={quote(text[:400])}")

    async def job_retry(self, request: web.Request) -> web.Response:
        return await self._act(request, jobcontrol.retry_job)

    async def job_cancel(self, request: web.Request) -> web.Response:
        return await self._act(request, jobcontrol.cancel_job)

    # -------------------------------------------------------------- send

    async def send_form(self, request: web.Request) -> web.Response:
        return self._page(request, "send.html", error="", number="", subject="", note="", office=self.intake.office_on)

    async def send(self, request: web.Request) -> web.Response:
        form = request[FORM]
        account = self._account(request)
        number = str(form.get("number", "")).strip()[:64]
        subject = str(form.get("subject", "")).strip()[:200]
        note = str(form.get("note", ""))[:5000]
        files = [f for f in form.getall("document", []) if isinstance(f, web.FileField) and f.filename]

        def refuse(text: str) -> web.Response:
            return self._page(request, "send.html", status=400, error=text, number=number, subject=subject, note=note,
                              office=self.intake.office_on)

        config = self.rt.config
        try:
            if not number:
                return refuse("Give the fax number to send to.")
            destination = NumberPolicy(config.numbers).check(re.sub(r"[\s()]", "", number), number)
            sender = account.name if is_email_address(account.name) else ""
            # The same decision as an SMTP client logged in as this account (docs/security.md).
            authorisation = SenderPolicy(config).authorise_smtp(envelope_sender=sender, user=account.name, client_ip="")
            if not files:
                return refuse(f"Choose at least one document ({self.intake.kinds_taken}).")
            attachments = tuple(attachment_from_bytes(f.filename, f.file.read()) for f in files)
            parsed = ParsedMessage(
                subject=subject, message_id=None, from_addr=sender or None, from_display=None, date=None,
                body_text=note, attachments=attachments, unsupported=(), skipped_inline=(),
                header_addresses=MappingProxyType({}), authentication_results=(),
            )
            ids = await self.intake.accept(b"", authorisation=authorisation, destinations=[destination], source="web",
                                           report_to=authorisation.report_to, parsed=parsed, every_file=True)
        except IntakeRefused as exc:
            return refuse(exc.text)
        log.info("web_send", account=account.name, job_ids=ids)
        raise web.HTTPSeeOther(f"/jobs/{ids[0]}")

    # ---------------------------------------------------------- received

    async def received(self, request: web.Request) -> web.Response:
        store = self.rt.store
        faxes = await store.run(store.web_received, self._account(request).received, limit=PAGE)
        return self._page(request, "received.html", faxes=faxes)

    async def received_one(self, request: web.Request) -> web.Response:
        fax = await self._fax(request)
        return self._page(request, "received_one.html", fax=fax, notice=request.query.get("notice", "")[:500], error="")

    async def received_pdf(self, request: web.Request) -> web.Response:
        fax = await self._fax(request)
        try:
            pdf = await received_pdf(self.rt, fax)
        except ReceivedFileMissing as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        return self._document(pdf, f"fax-{fax.uuid}.pdf", "application/pdf")

    async def received_preview(self, request: web.Request) -> web.Response:
        fax = await self._fax(request)
        width = THUMB_WIDTH if request.query.get("size") == "thumb" else PREVIEW_WIDTH
        try:
            png = self.previews.get(f"rx-{fax.uuid}", width, None)
        except PreviewError:
            try:
                pdf = await received_pdf(self.rt, fax)
                png = await asyncio.to_thread(self.previews.get, f"rx-{fax.uuid}", width, pdf)
            except (ReceivedFileMissing, PreviewError):
                raise web.HTTPNotFound(text="No preview for this fax.") from None
        return self._document(png, f"fax-{fax.uuid}.png", "image/png")

    async def received_email(self, request: web.Request) -> web.Response:
        fax = await self._fax(request)
        address = str(request[FORM].get("address", "")).strip()
        if not is_email_address(address):
            return self._page(request, "received_one.html", status=400, fax=fax, notice="",
                              error=f"Not an email address: {address[:100]!r}")
        try:
            pdf = await received_pdf(self.rt, fax)
        except ReceivedFileMissing as exc:
            return self._page(request, "received_one.html", status=400, fax=fax, notice="", error=str(exc))
        received_at = dt.datetime.fromtimestamp(fax.first_seen).astimezone()
        facts = FaxFacts(fax.uuid, fax.extension_id, fax.caller_id, fax.destination, received_at, None)
        cfg = self.rt.config.mail
        preview = await asyncio.to_thread(email_preview, pdf) if cfg.preview else None
        msg = build_received_email(
            mail_from=cfg.from_, to=[address], facts=facts,
            attachments=[FaxAttachment(pdf, attachment_name(received_at, fax.caller_id), "application/pdf")],
            notes=[f"Sent from the web console by {self._account(request).name}."], preview=preview,
        )
        store = self.rt.store
        await store.run(store.enqueue_mail, "forward", cfg.from_, [address], to_bytes(msg), ref=fax.uuid)
        self.rt.wake("outbox")
        log.info("web_fax_forwarded", account=self._account(request).name, uuid=fax.uuid)
        raise web.HTTPSeeOther(f"/received/{fax.uuid}?notice={quote(f'Queued for {address}: the outbox sends it.')}")

    # ------------------------------------------------------------- admin

    async def admin(self, request: web.Request) -> web.Response:
        if not self._account(request).admin:
            raise web.HTTPNotFound()
        from gatewayd.http import gather_health

        healthy, body, facts = await gather_health(self.rt)
        store = self.rt.store
        outbox = await store.run(store.outbox_by_state)
        cfg = self.rt.config
        extensions = list(cfg.inbound.extensions) or ([cfg.provider.extension] if cfg.provider.extension else [])
        mailto: list[tuple[int, str]] = []
        for ext in extensions:
            try:
                addresses = await asyncio.wait_for(self.rt.provider.get_fax_mailto(ext), timeout=5)
                mailto.append((ext, ", ".join(addresses) or "(none)"))
            except Exception as exc:
                mailto.append((ext, f"could not ask the provider: {type(exc).__name__}: {exc}"))
        return self._page(request, "admin.html", healthy=healthy, health=body, jobs=facts.jobs, outbox=outbox,
                          mailto=mailto, routes=cfg.inbound.routes, states=JOB_STATES)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = self._static.get(name)
        if data is None:
            raise web.HTTPNotFound()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=data, content_type=kind, headers={"Cache-Control": "public, max-age=3600"})


def _document_gone(exc: StoreError) -> bool:
    """Whether ``read_document`` failed because the document is no longer kept (its file or row gone), not because the store is down."""
    return exc.__cause__ is None or isinstance(exc.__cause__, FileNotFoundError)
