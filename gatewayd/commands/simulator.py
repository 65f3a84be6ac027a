"""``gatewayd simulator``: the provider simulator alone, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio

from gatewayd.cli import EXIT_USAGE, CommandError


def main(args: argparse.Namespace) -> int:
    from gatewayd.provider.simulator import main_simulator

    try:
        asyncio.run(main_simulator(args.listen, args.client_id, args.client_secret))
    except ValueError as exc:  # a bad --listen value
        raise CommandError(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        pass
    return 0
