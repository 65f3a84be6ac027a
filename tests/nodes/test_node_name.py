"""Two nodes with one ``storage.node_name`` would both hold that node's leases: the second refuses to start
(gatewayd/leadership.py, NodeName; docs/deployment.md, Several nodes). A restart of the same node (its state
directory's token) goes on at once, and a name given back at a clean stop is free at once. Both backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatewayd.leadership import NodeName, NodeNameInUse, node_token

TTL = 1.0


def test_the_token_is_the_state_directorys_own(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = node_token(tmp_path / "a")
    assert node_token(tmp_path / "a") == first  # the same node after a restart
    assert node_token(tmp_path / "b") != first  # another machine, another directory


async def test_a_second_node_with_the_same_name_refuses_to_start(open_store) -> None:  # type: ignore[no-untyped-def]
    stopping = asyncio.Event()
    a = NodeName(open_store(), "gw1", "token-a", stopping, ttl=TTL)
    await a.start()
    renewing = asyncio.create_task(a.run())  # a live node keeps its name
    try:
        b = NodeName(open_store(), "gw1", "token-b", asyncio.Event(), ttl=TTL)
        with pytest.raises(NodeNameInUse, match="gw1"):
            await b.start()
        # Another name is another lease.
        await NodeName(open_store(), "gw2", "token-b", asyncio.Event(), ttl=TTL).start()
        # The same node restarted (its old lease not expired yet) is itself.
        await NodeName(open_store(), "gw1", "token-a", asyncio.Event(), ttl=TTL).start()
    finally:
        stopping.set()
        await renewing
    await a.stop()  # a clean stop gives the name back: the other starts at once
    b2 = NodeName(open_store(), "gw1", "token-b", asyncio.Event(), ttl=30.0)
    await asyncio.wait_for(b2.start(), 5)
