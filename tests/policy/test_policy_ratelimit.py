"""RateLimiter against a real Store, on both backends (the store contract suite, tests/support/stores.py): limits survive a restart and slide by the hour."""

from __future__ import annotations

import pytest

from gatewayd.config import SenderRule
from gatewayd.email_to_fax.errors import RateLimitReached
from gatewayd.email_to_fax.policy import RateLimiter
from support.stores import StoreFactory
from gatewayd.store import NewJob, Store

DOC = "0" * 64  # enqueue_jobs only records the hash; no file is needed here


def enqueue(store: Store, rule: SenderRule | None, count: int) -> list[int]:
    jobs = [
        NewJob(number="+78123092631", dst_num="78123092631", extension=101, report_to="alice@example.com",
               source="smtp", rule_key=rule.key if rule else "")
        for _ in range(count)
    ]
    return store.enqueue_jobs(DOC, 1, 1000, jobs)


@pytest.fixture
def rule() -> SenderRule:
    return SenderRule(match=("*@example.com",), max_per_hour=3, index=0)


def test_limit_counts_stored_jobs_and_survives_restart(open_store: StoreFactory, clock, rule) -> None:
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    limiter.check(rule)
    enqueue(store, rule, 2)
    limiter.check(rule)  # 2 used + 1 new = 3: still allowed
    with pytest.raises(RateLimitReached):
        limiter.check(rule, new_jobs=2)  # a message with two more recipients
    clock.advance(60)
    enqueue(store, rule, 1)
    with pytest.raises(RateLimitReached) as info:
        limiter.check(rule)
    assert info.value.reply == "450 4.7.1 rate limit reached, try later"
    assert not info.value.permanent
    store.close()

    # A restart must not reset the budget.
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    with pytest.raises(RateLimitReached):
        limiter.check(rule)

    # The first two jobs leave the window exactly one hour after they were
    # stored; the third (60 s later) is still in it.
    clock.advance(3600 - 60 - 1)
    with pytest.raises(RateLimitReached):
        limiter.check(rule)
    clock.advance(1)
    limiter.check(rule, new_jobs=2)
    with pytest.raises(RateLimitReached):
        limiter.check(rule, new_jobs=3)
    clock.advance(60)
    limiter.check(rule, new_jobs=3)
    store.close()


def test_rules_have_separate_budgets(open_store: StoreFactory, clock, rule) -> None:
    other = SenderRule(match=("*@example.org",), max_per_hour=3, index=1)
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    enqueue(store, rule, 3)
    with pytest.raises(RateLimitReached):
        limiter.check(rule)
    limiter.check(other, new_jobs=3)
    store.close()


def test_no_rule_or_no_limit_is_never_limited(open_store: StoreFactory, clock) -> None:
    unlimited = SenderRule(match=("*@example.com",), index=0)
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    enqueue(store, unlimited, 50)
    enqueue(store, None, 50)
    limiter.check(unlimited, new_jobs=1000)
    limiter.check(None, new_jobs=1000)
    # The 50 jobs are counted under the rule's key: the same rule with a limit is over it.
    limited = SenderRule(match=unlimited.match, max_per_hour=49, index=0)
    assert limited.key == unlimited.key
    with pytest.raises(RateLimitReached):
        limiter.check(limited)
    store.close()


def test_new_jobs_zero_only_asks_whether_over(open_store: StoreFactory, clock, rule) -> None:
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    enqueue(store, rule, 3)
    limiter.check(rule, new_jobs=0)  # exactly at the limit, nothing more asked
    with pytest.raises(RateLimitReached):
        limiter.check(rule, new_jobs=1)
    store.close()


def test_a_rule_moved_in_the_file_gets_a_fresh_counter(open_store: StoreFactory, clock, rule) -> None:
    # The counter key is the rule's position; documented in docs/security.md.
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    enqueue(store, rule, 3)
    moved = SenderRule(match=rule.match, max_per_hour=3, index=1)
    assert moved.key != rule.key
    with pytest.raises(RateLimitReached):
        limiter.check(rule)  # the old position's counter is full
    limiter.check(moved, new_jobs=3)  # the new position's is empty
    store.close()


async def test_check_runs_on_the_store_thread(open_store: StoreFactory, clock, rule) -> None:
    store = open_store(clock=clock)
    limiter = RateLimiter(store, clock=clock)
    await store.run(enqueue, store, rule, 3)
    with pytest.raises(RateLimitReached):
        await store.run(limiter.check, rule)
    clock.advance(3600)
    await store.run(limiter.check, rule, 3)
    store.close()
