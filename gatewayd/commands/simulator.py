"""``gatewayd simulator``: the provider simulator alone, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio

from gatewayd.commands.common import EXIT_USAGE, CommandError
from gatewayd.provider.simulator import main_simulator


def main(args: argparse.Namespace) -> int:
    paths: dict[str, str] = {}
    for item in getattr(args, "paths", []):
        key, sep, template = item.partition("=")
        if not sep:
            raise CommandError(f"--path wants KEY=PATH, not {item!r}", EXIT_USAGE)
        paths[key.strip()] = template.strip()
    try:
        asyncio.run(main_simulator(args.listen, args.client_id, args.client_secret, paths=paths))
    except ValueError as exc:  # a bad --listen or --path value (PathProblem is one)
        raise CommandError(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        pass
    return 0
