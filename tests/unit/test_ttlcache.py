"""TtlCache: expiry by each entry's TTL, LRU bound, nothing kept for a zero TTL."""

from __future__ import annotations

from mailward.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_with_their_own_ttl_and_report_what_is_left():
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, clock)
    cache.put("short", 1, 5)
    cache.put("long", 2, 50)
    clock.now += 4
    assert cache.get_with_remaining("short") == (1, 1.0)
    clock.now += 1
    assert cache.get("short") is None  # gone at exactly its TTL
    assert cache.get("long") == 2
    assert len(cache) == 1


def test_least_recently_used_goes_first_when_full():
    cache: TtlCache[str, int] = TtlCache(2, Clock())
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3, 60)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_zero_ttl_or_zero_size_keeps_nothing():
    cache: TtlCache[str, int] = TtlCache(10, Clock())
    cache.put("a", 1, 0)
    assert cache.get("a") is None
    disabled: TtlCache[str, int] = TtlCache(0, Clock())
    disabled.put("a", 1, 60)
    assert disabled.get("a") is None
