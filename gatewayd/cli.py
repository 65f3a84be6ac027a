"""The ``gatewayd`` command line (docs/operations.md, The command line):
parses the arguments and runs the command.

Usage and configuration errors exit 2 with the reason on stderr. Commands
that read or change jobs open the state directory directly: SQLite in WAL
mode lets them work while the daemon runs. The helpers every command shares
are in gatewayd/commands/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from gatewayd import __version__
from gatewayd.commands import backup, control, purge, received
from gatewayd.commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load, open_store
from gatewayd.commands.terminal import safe_text
from gatewayd.config import Config, config_path, config_warnings, redact_url
from gatewayd.jobstates import JOB_STATES
from gatewayd.leadership import NodeNameInUse
from gatewayd.logs import get_logger, setup_logging
from gatewayd.passwords import hash_password
from gatewayd.store import Job, JobEvent, JobNotFound, Lease, StoreError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandError", "build_parser", "main"]


def _add_config_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before or after the command name; the subcommand's copy must
    # not overwrite a value given before it, hence SUPPRESS there.
    parser.add_argument(
        "-c", "--config", metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="configuration file (default: $GATEWAYD_CONFIG, else /etc/gatewayd/config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayd", description="Email-to-fax and fax-to-email gateway daemon.")
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    _add_config_option(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_option(p, top=False)
        return p

    add("run", "run the daemon in the foreground (what systemd starts)")
    p = add("demo", "the sandbox: provider simulator, gateway and mail sink on loopback")
    p.add_argument("--dir", default="./demo", help="where the demo keeps its state and Maildir (default ./demo)")
    p.add_argument("--smtp-port", type=int, default=2525, help="SMTP port of the demo gateway (default 2525; 0 = any free port)")
    p.add_argument("--exit-after-tour", action="store_true", help="stop after the sample fax was sent and one received (for tests)")
    add("check-config", "load and validate the configuration")
    p = add("send", "queue a fax from the command line through the same pipeline and policy")
    p.add_argument("number")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--from", dest="sender", default="", help="envelope sender: its [[senders]] rule applies and reports go there")
    p.add_argument("--extension", type=int, default=None, help="send from this fax extension")
    p.add_argument("--subject", default="", help="subject (for the cover page and reports)")
    p = add("jobs", "list jobs")
    p.add_argument("--state", default=None, help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50)
    p = add("job", "show one job with its full history")
    p.add_argument("id", type=int)
    p = add("cancel", "cancel a queued or failed job")
    p.add_argument("id", type=int)
    p = add("retry", "retry a failed job")
    p.add_argument("id", type=int)
    p = add("received", "list relayed received faxes and where they went")
    p.add_argument("--limit", type=int, default=50)
    p = add("mailto", "show or set an extension's fax_mailto at the provider")
    p.add_argument("extension", type=int)
    p.add_argument("--set", dest="addresses", default=None, metavar="ADDR,ADDR")
    add("provider-check", "read-only check of every provider path gatewayd uses (exit 0 all as expected, 1 not)")
    p = add("backup", "copy the state (database and documents) into a new directory while the daemon runs")
    p.add_argument("dir", metavar="DIR", help="a new or empty directory")
    p = add("purge", "purge what [retention] says is old enough now (the daemon does it every retention.interval)")
    p.add_argument("--dry-run", action="store_true", help="change nothing; list what would go, with counts and bytes")
    add("hash-password", "read a password on stdin, print the hash for [[smtp.users]]")
    p = add("simulator", "run the provider simulator alone")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument("--client-id", default="demo")
    p.add_argument("--client-secret", default="demo")
    p.add_argument("--path", dest="paths", action="append", default=[], metavar="KEY=PATH",
                   help="serve a provider path elsewhere, as [provider.paths] KEY = PATH (repeatable)")
    return parser


# ------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here for start-up speed: the daemon pulls in every component,
    # which the one-shot commands do not need.
    from gatewayd.daemon import Daemon

    config = load(args)
    setup_logging(config.log.level, config.log.format)
    log = get_logger("gatewayd.cli")
    for warning in config_warnings(config):
        log.warning("config_warning", warning=warning)
    # Until the daemon installs its own handlers: a stop request during
    # start-up unwinds cleanly (store closed), a reload request is ignored
    # instead of killing the process (SIGHUP's default action).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    daemon = Daemon(config, config_path=config_path(args.config))
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        log.info("gatewayd_stopped", during="start-up")
        return EXIT_OK
    except (StoreError, NodeNameInUse) as exc:
        log.error("gatewayd_start_failed", error=str(exc))
        return EXIT_FAILURE
    except Exception:
        log.exception("gatewayd_failed")
        return EXIT_FAILURE


def cmd_check_config(args: argparse.Namespace) -> int:
    from gatewayd.commands.database_check import check_database  # the database is reached only here

    config = load(args)
    database = check_database(config)
    print(summarise_config(config, schema=database.text))
    print(office_line(config))
    # Valid but open: said on stderr, the exit code stays 0 (docs/operations.md).
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    if not database.ok:
        raise CommandError(f"{database.where}: {database.text}")
    return EXIT_OK


def office_line(c: Config) -> str:
    """Whether office documents can be converted here (docs/documents.md, Office documents)."""
    from gatewayd.documents.office import office_problem, office_settings  # LibreOffice is only looked for here

    if not c.documents.office:
        return "  office      off: office and text attachments are refused as unsupported"
    problem = office_problem(office_settings(c.documents))
    if problem:
        return f"  office      NOT AVAILABLE: {problem}; office and text attachments are refused as unsupported"
    return (f"  office      LibreOffice, {c.documents.office_concurrency} at once, "
            f"{c.documents.convert_timeout:g}s and {c.documents.convert_memory // (1024 * 1024)} MiB a document")


def summarise_config(c: Config, *, schema: str = "") -> str:
    """The check-config summary; ``schema``: what the database said (gatewayd/commands/database_check.py), on its line."""
    lines = [
        f"configuration {c.source}: valid",
        f"  provider    {c.provider.base_url} (token {c.provider.token_url}), client {c.provider.client_id}, default extension {c.provider.extension or 'none'}",
        f"  smtp        listen {', '.join(map(str, c.smtp.listen))}; domains {', '.join(c.smtp.domains)}; auth {c.smtp.auth}; "
        f"TLS {'on' if c.smtp.tls_enabled else 'off'}{' (required)' if c.smtp.require_tls else ''}; {len(c.smtp.users)} account(s); "
        f"{c.smtp.processes} listener process{'es' if c.smtp.processes > 1 else ''}",
        f"  trusted     {', '.join(map(str, c.smtp.trusted_networks)) or 'none'}",
        f"  senders     {len(c.senders)} rule(s)" + "".join(f"\n                [{r.index}] {', '.join(r.match)} -> extension {r.extension or c.provider.extension}" for r in c.senders),
        f"  numbers     region {c.numbers.default_region}; allow {', '.join(c.numbers.allow) or 'all'}; deny {', '.join(c.numbers.deny) or 'none'}; "
        f"premium {'blocked' if c.numbers.block_premium else 'allowed'}; dial {c.numbers.dial_format}",
        f"  documents   {c.documents.page_size}, cover page {c.documents.cover_page}, at most {c.documents.max_pages} pages",
        "  imap        " + (f"{c.imap.username}@{c.imap.host}:{c.imap.port} {c.imap.mailbox}" if c.imap.enabled else "off"),
        "  inbound     " + (f"every {c.inbound.poll_interval:g}s, extensions {', '.join(map(str, c.inbound.extensions)) or 'all fax extensions'}, attach {c.inbound.attach}, {len(c.inbound.routes)} route(s)" if c.inbound.enabled else "off"),
        f"  mail        relay {c.mail.relay} ({c.mail.security}), from {c.mail.from_}, reports {c.mail.reports}, admin {', '.join(c.mail.admin) or 'none'}",
        f"  state       {c.state_dir}" + (f" (intake refused below {c.storage.min_free // 1_000_000}MB free)" if c.storage.min_free else ""),
        "  database    " + (f"PostgreSQL {redact_url(c.storage.database_url)}"
                             + (" (password from storage.database_password)" if c.storage.database_password else "")
                             + f"; leases {c.storage.lease:g}s" if c.storage.postgres else f"SQLite in {c.state_dir}")
        + (f"; {schema}" if schema else ""),
        "  retention   " + ", ".join(f"{k} {_days(getattr(c.retention, k))}" for k in ("documents", "mail", "jobs", "received"))
        + (f"; purged every {c.retention.interval:g}s" if c.retention.interval else "; purged only by `gatewayd purge`"),
        f"  http        {c.http.listen or 'off'}",
    ]
    return "\n".join(lines)


def _days(seconds: float) -> str:
    return "for ever" if seconds <= 0 else f"{seconds / 86400:g}d"


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password", EXIT_USAGE)
    print(hash_password(password))
    return EXIT_OK


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cmd_jobs(args: argparse.Namespace) -> int:
    if args.state and args.state not in JOB_STATES:
        raise CommandError(f"unknown state {args.state!r}; one of {', '.join(JOB_STATES)}", EXIT_USAGE)
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", EXIT_USAGE)
    store = open_store(load(args))
    try:
        jobs = store.list_jobs(state=args.state, limit=args.limit)
        leases = store.leases()
    finally:
        store.close()
    print(f"{'ID':>6}  {'CREATED':19}  {'STATE':10}  {'NUMBER':16}  {'EXT':>6}  {'PAGES':>5}  {'NODE':12}  FROM")
    for j in jobs:
        # Every text cell escaped: senders write what they like (gatewayd/commands/terminal.py).
        print(f"{j.id:>6}  {_when(j.created_at):19}  {safe_text(j.state):10}  {safe_text(j.number):16}  {j.extension:>6}  {j.pages:>5}  "
              f"{safe_text(j.node or '-'):12}  {safe_text(j.report_to or '-')}")
    if leases:
        print()
        print(format_leases(leases, time.time()))
    return EXIT_OK


def format_leases(leases: Sequence[Lease], now: float) -> str:
    """Which node runs which one-at-a-time worker, and until when (gatewayd/leadership.py)."""
    out = [f"{'LEASE':10}  {'NODE':12}  UNTIL"]
    for lease in leases:
        until = _when(lease.expires_at) + (" (expired)" if lease.expires_at <= now else "")
        out.append(f"{safe_text(lease.name):10}  {safe_text(lease.holder):12}  {until}")
    return "\n".join(out)


def cmd_job(args: argparse.Namespace) -> int:
    store = open_store(load(args))
    try:
        try:
            job = store.get_job(args.id)
        except JobNotFound:
            raise CommandError(f"no job {args.id}") from None
        events = store.job_events(job.id)
    finally:
        store.close()
    print(format_job(job, events))
    return EXIT_OK


def format_job(job: Job, events: Sequence[JobEvent]) -> str:
    rows = [
        ("job", str(job.id)),
        ("state", job.state + (f" ({job.reason})" if job.reason else "")),
        ("number", job.number + (f" (dialled as {job.dst_num})" if job.dst_num != job.number else "")),
        ("extension", str(job.extension)),
        ("from", job.report_to or "-"),
        ("source", job.source),
        ("node", job.node or "-"),
        ("subject", job.subject or "-"),
        ("message-id", job.message_id or "-"),
        ("pages", str(job.pages)),
        ("document", f"{job.document} ({job.doc_bytes} bytes)"),
        ("provider id", "-" if job.provider_id is None else str(job.provider_id)),
        ("provider status", job.provider_status or "-"),
        ("attempts", str(job.attempts)),
        ("claimed by", job.claimed_by or "-"),
        ("created", _when(job.created_at)),
        ("submitted", _when(job.submitted_at)),
        ("finished", _when(job.finished_at)),
    ]
    if job.note:
        rows.append(("note", job.note))
    # Senders and the provider wrote most of this: every value escaped
    # (gatewayd/commands/terminal.py).
    out = [f"{k + ':':17}{safe_text(v)}" for k, v in rows]
    out.append("history:")
    for e in events:
        arrow = f"{e.from_state or '(new)'} -> {e.to_state}"
        out.append(f"  {_when(e.at)}  {safe_text(arrow):28}  {safe_text(e.reason)}")
    return "\n".join(out)


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here for start-up speed: the demo runs the whole daemon.
    from gatewayd import demo

    return demo.main(args)


def cmd_send(args: argparse.Namespace) -> int:
    # Imported here for start-up speed: sending loads the document pipeline.
    from gatewayd.commands import send

    return send.main(args)


def cmd_simulator(args: argparse.Namespace) -> int:
    # Imported here for start-up speed: the simulator is an aiohttp server.
    from gatewayd.commands import simulator

    return simulator.main(args)


def cmd_provider_check(args: argparse.Namespace) -> int:
    # Imported here for start-up speed: it needs the provider client (httpx).
    from gatewayd.commands import provider_check

    return provider_check.main(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "hash-password": cmd_hash_password,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "demo": cmd_demo,
    "send": cmd_send,
    "cancel": control.cancel,
    "retry": control.retry,
    "received": received.received,
    "mailto": received.mailto,
    "purge": purge.main,
    "simulator": cmd_simulator,
    "provider-check": cmd_provider_check,
    "backup": backup.backup,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # One-shot commands log only warnings, to stderr: stdout is their output.
    # `run` and `demo` configure logging again from their own settings.
    setup_logging("warning", "auto", sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except CommandError as exc:
        print(f"gatewayd {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gatewayd jobs | head`: the reader went away; not an error worth a traceback.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # no flush error at exit
        return EXIT_FAILURE
