"""``inbound.delete_after_relay``: a received fax is deleted at the provider
once the relay accepted its email, never before, and a failing DELETE is
retried without holding up or repeating the delivery (docs/inbound.md,
"Deleting at the provider")."""

from __future__ import annotations

from support.inbound import by_uuid


def deletes(sim) -> int:
    return sim.count_requests("DELETE", "/extension/*/fax/in/*")


async def test_deleted_after_the_relay_accepted_it(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness(inbound={"delete_after_relay": True})
    await h.poll()
    assert deletes(sim) == 0  # queued, not relayed yet: the provider keeps it
    while await h.deliver():
        pass
    assert len(by_uuid(sink.messages)[uuid]) == 1
    await h.poll()
    assert sim.deleted_received == [uuid] and uuid not in sim.received
    assert h.store.count_provider_deletes() == 0
    await h.cycle()
    assert deletes(sim) == 1 and len(sink.messages) == 1  # nothing twice


async def test_off_by_default_nothing_is_deleted(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, faxes["pdf"].data)
    h = await make_harness()
    await h.cycle()
    await h.cycle()
    assert len(by_uuid(sink.messages)[uuid]) == 1
    assert deletes(sim) == 0 and uuid in sim.received


async def test_failing_delete_is_retried_and_delivery_happened_once(sim, sink, make_harness, faxes):
    sim.extensions[122].fax_mailto = "alice@x.test"
    uuid = sim.inject_received(122, faxes["pdf"].data)
    # More 503s than the client's own attempts in one poll (4): the first
    # poll's DELETE fails for good, a later poll's succeeds.
    sim.add_fault("/extension/*/fax/in/*", method="DELETE", status=503, count=6)
    h = await make_harness(inbound={"delete_after_relay": True})
    await h.cycle()
    await h.poll()
    assert len(by_uuid(sink.messages)[uuid]) == 1  # delivered, whatever the DELETE does
    assert h.ledger()[uuid].state == "relayed"
    assert uuid in sim.received and deletes(sim) == 4
    assert h.store.count_provider_deletes() == 1  # still pending
    await h.poll()  # its backoff is not over: not tried again yet
    assert deletes(sim) == 4
    h.clock.advance(60)
    await h.cycle()
    assert sim.deleted_received == [uuid]
    assert h.store.count_provider_deletes() == 0
    h.clock.advance(60)
    await h.cycle()
    assert len(sink.messages) == 1 and sim.deleted_received == [uuid]
