"""The web console's store queries (gatewayd/store/web.py, docs/web.md) on both backends (the store contract suite, tests/support/stores.py):
who sees which jobs and faxes, senders matched whatever their case, the number search, paging newest first."""

from __future__ import annotations

from support.stores import StoreFactory
from gatewayd.store import NewJob, ReceivedFax, Store
from gatewayd.store.web import JobFilter, ReceivedFilter

DOC = "0" * 64  # enqueue_jobs only records the hash


def jobs(store: Store, report_to: str, number: str, count: int = 1, account: str = "") -> list[int]:
    return store.enqueue_jobs(DOC, 1, 100, [
        NewJob(number=number, dst_num=number.lstrip("+"), extension=100, report_to=report_to, source="smtp", account=account)
        for _ in range(count)
    ])


def fax(uuid: str, seen: float, destination: str = "74951111111", extension: int = 100) -> ReceivedFax:
    return ReceivedFax(uuid, extension, "+74950000000", destination, "", 1000, seen, "queued", ("clinic@example.com",), None, None, "")


def test_jobs_by_account_or_sender_ignoring_case_newest_first(open_store: StoreFactory) -> None:
    s = open_store()
    alice = jobs(s, "Alice@Example.COM", "+74951230001", 3)
    bob = jobs(s, "bob@example.com", "+74951230002", 2)
    carol = jobs(s, "carol@example.com", "+74959990003", 1, account="carol")
    everyone = s.web_jobs(JobFilter(everything=True), limit=100)
    assert [j.id for j in everyone] == sorted(alice + bob + carol, reverse=True)
    mine = JobFilter(account="carol", senders=("alice@example.com",))
    assert [j.id for j in s.web_jobs(mine)] == sorted(alice + carol, reverse=True)
    assert [j.id for j in s.web_jobs(JobFilter(senders=("bob@example.com",)))] == sorted(bob, reverse=True)
    assert s.web_jobs(JobFilter()) == [] and s.web_jobs(JobFilter(account="nobody")) == []
    # paging: a page, then the page before its last id
    first = s.web_jobs(mine, limit=2)
    assert [j.id for j in first] == sorted(alice + carol, reverse=True)[:2]
    assert [j.id for j in s.web_jobs(mine, before=first[-1].id, limit=2)] == sorted(alice + carol, reverse=True)[2:4]
    # filters: state, and a part of the number
    assert [j.id for j in s.web_jobs(JobFilter(everything=True), number="9990")] == carol
    assert s.web_jobs(JobFilter(everything=True), number="0000") == []
    s.transition(bob[0], "canceled", "by user")
    assert [j.id for j in s.web_jobs(JobFilter(everything=True), state="canceled")] == [bob[0]]
    # one job: only within the account's scope
    assert s.web_job(mine, alice[0]) is not None and s.web_job(mine, bob[0]) is None
    assert s.web_job(JobFilter(senders=("ALICE@example.com".lower(),)), alice[1]) is not None
    assert s.web_job(JobFilter(), alice[0]) is None and s.web_job(JobFilter(everything=True), bob[1]) is not None


def test_received_faxes_by_target_newest_first(open_store: StoreFactory) -> None:
    s = open_store()
    for n, (uuid, seen, dest, ext) in enumerate([("a", 10.0, "74951111111", 100), ("b", 20.0, "74952222222", 200),
                                                  ("c", 30.0, "74951111111", 300), ("d", 30.0, "74953333333", 100)]):
        if n % 2:
            s.hold_received(fax(uuid, seen, dest, ext), "no recipient")
        else:
            s.queue_received(fax(uuid, seen, dest, ext), "gw@test", b"mail")
    everything = ReceivedFilter(everything=True)
    got = [r.uuid for r in s.web_received(everything)]
    assert got[2:] == ["b", "a"] and set(got[:2]) == {"c", "d"}  # newest first; "c" and "d" arrived together
    assert [r.uuid for r in s.web_received(everything, before=30.0)] == ["b", "a"]
    assert [r.uuid for r in s.web_received(everything, limit=1)] == got[:1]
    by_number = ReceivedFilter(targets=("74951111111",))
    assert [r.uuid for r in s.web_received(by_number)] == ["c", "a"]
    by_extension = ReceivedFilter(targets=("100",))
    assert [r.uuid for r in s.web_received(by_extension)] == ["d", "a"]
    assert s.web_received(ReceivedFilter()) == []
    assert s.web_received_one(by_number, "c") is not None and s.web_received_one(by_number, "b") is None
    listed = s.received_with_mail(limit=10)
    assert [(r.uuid, state) for r, state, _ in listed][2:] == [("b", None), ("a", "pending")]
    assert {r.uuid for r, _, _ in listed[:2]} == {"c", "d"}
