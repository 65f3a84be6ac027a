"""``gatewayd simulator``: the provider simulator alone, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio

from gatewayd.commands.common import EXIT_USAGE, CommandError
from gatewayd.provider.simulator import main_simulator


def main(args: argparse.Namespace) -> int:
    try:
        asyncio.run(main_simulator(args.listen, args.client_id, args.client_secret))
    except ValueError as exc:  # a bad --listen value
        raise CommandError(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        pass
    return 0
