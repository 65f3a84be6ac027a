"""A faithful simulator of the fax provider's API, on a real loopback socket.

It serves the same paths as the real API (``/oauth/token`` and
``/api/ver1.0/...``) so the real ``ProviderClient`` talks to it unchanged,
plus a control API under ``/_sim/`` for the demo and for tests. Tests can also
drive it in-process (``inject_received``, ``set_outcome``, ``add_fault``,
``clock.advance`` ...). See docs/provider.md.

Modules: ``model`` (account state and the sent-fax state machine), ``faults``
(injected faults), ``handlers`` (the provider's REST API), ``control`` (the
``/_sim/`` API), ``app`` (the server), ``cli`` (``gatewayd simulator``).
"""

from gatewayd.provider.simulator.app import ProviderSimulator, run_simulator
from gatewayd.provider.simulator.cli import main_simulator, parse_listen
from gatewayd.provider.simulator.faults import Fault
from gatewayd.provider.simulator.model import (
    LoggedRequest,
    SimClock,
    SimExtension,
    SimReceivedFax,
    SimSentFax,
    count_pages,
)

__all__ = [
    "Fault", "LoggedRequest", "ProviderSimulator", "SimClock", "SimExtension",
    "SimReceivedFax", "SimSentFax", "count_pages", "main_simulator", "parse_listen", "run_simulator",
]
