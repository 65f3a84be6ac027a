"""The daemon builds the inbound poller only when [inbound].enabled."""

from __future__ import annotations

from gatewayd.daemon import Runtime, build_services
from gatewayd.fax_to_email.poller import InboundPoller
from gatewayd.health import Health
from gatewayd.leadership import Leased
from gatewayd.metrics import Metrics
from gatewayd.store import Store


def _names(config, tmp_path) -> list[str]:
    store = Store(tmp_path / "wiring-state")
    try:
        rt = Runtime(config=config, store=store, provider=None, metrics=Metrics(), health=Health())
        services = build_services(rt)
        # under the "inbound" lease: one node polls (gatewayd/leadership.py)
        assert sum(isinstance(s, Leased) and isinstance(s.service, InboundPoller) for s in services) == (1 if config.inbound.enabled else 0)
        return [s.name for s in services]
    finally:
        store.close()


def test_inbound_poller_is_wired_when_enabled(config_factory, tmp_path):
    names = _names(config_factory(smtp={"listen": "127.0.0.1:2599"}), tmp_path)
    assert "inbound" in names and "outbox" in names
    assert names.index("outbox") < names.index("inbound")


def test_inbound_poller_is_not_wired_when_disabled(config_factory, tmp_path):
    names = _names(config_factory(smtp={"listen": "127.0.0.1:2599"}, inbound={"enabled": False}), tmp_path)
    assert "inbound" not in names
