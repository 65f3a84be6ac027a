"""The shared hostile corpus (tests/support/corpus.py) sent over SMTP: each message
gets the reply the SPEC prescribes, nothing refused reaches the provider,
and the listener stays up throughout."""

from __future__ import annotations

from pathlib import Path

from support.corpus import ACCEPTED, hostile_corpus
from support.e2f import DOMAIN, NUMBER_1, RawSMTP, load, merge, run_gateway, wait_for


async def test_hostile_corpus_over_smtp(tmp_path: Path, sim_data: dict, sim) -> None:
    cases = hostile_corpus(tmp_path / "corpus")
    assert len(cases) >= 30
    data = merge(sim_data, {"smtp": {"max_message_size": "40MB"}})
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        c = await RawSMTP.connect(gw.port)
        answers: dict[str, str] = {}
        for case in cases:
            _, rcpts, reply = await c.send(case.raw, recipients=(f"{NUMBER_1}@{DOMAIN}",))
            assert rcpts == ["250 2.1.5 recipient ok"], case.name
            answers[case.name] = reply
            assert await c.cmd("NOOP") == "250 OK", f"session out of step after {case.name}"
        await c.close()
        wrong = {c.name: (answers[c.name], c.expected_reply_prefix) for c in cases if not answers[c.name].startswith(c.expected_reply_prefix)}
        assert not wrong, wrong
        assert gw.replies("500") == 0
        accepted = [c for c in cases if c.expected_reply_prefix == ACCEPTED]
        ids = [int(i) for c in accepted for i in answers[c.name].removeprefix(ACCEPTED).split()]
        assert len(gw.jobs()) == len(ids)
        # Only the accepted ones reach the provider, once each.
        await wait_for(lambda: all(gw.store.get_job(i).state != "queued" and gw.store.get_job(i).state != "submitting" for i in ids),
                       timeout=60, what="accepted jobs submitted")
        sent = sorted(int(f.filename.removeprefix("fax-").removesuffix(".pdf")) for f in sim.sent_faxes())
        assert sent == sorted(ids)
        # Still listening after all of it.
        again = await RawSMTP.connect(gw.port)
        assert again.greeting.startswith("220 ")
        await again.close()
