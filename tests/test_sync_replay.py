"""conngrpc.sync's ReplayedRequests: a client stream's requests, sent again to each attempt."""

from __future__ import annotations

import pytest

from conngrpc.sync.streams import ReplayedRequests


def test_each_attempt_gets_the_requests_drawn_so_far_then_new_ones_in_order() -> None:
    replay = ReplayedRequests(iter([b"a", b"b", b"c"]), None, limit=100)
    first = replay.view()
    assert [next(first), next(first)] == [b"a", b"b"]  # then the attempt failed
    second = replay.view()
    assert list(second) == [b"a", b"b", b"c"]
    assert not replay.committed


def test_a_request_drawn_by_an_attempt_that_ended_reaches_the_next() -> None:
    replay = ReplayedRequests(iter([b"a", b"b"]), None, limit=100)
    stale = replay.view()
    assert next(stale) == b"a"  # grpc drew it for an attempt that ended, and dropped it
    assert list(replay.view()) == [b"a", b"b"]


def test_past_the_buffer_the_call_commits_and_the_attempt_drawing_goes_on_alone() -> None:
    replay = ReplayedRequests(iter([b"12345", b"67890", b"abcde", b"fghij"]), None, limit=7)
    stale = replay.view()
    assert next(stale) == b"12345"  # 5 bytes kept
    current = replay.view()
    assert next(current) == b"12345"
    assert next(current) == b"67890"  # 10 bytes: past the buffer, the call commits
    assert replay.committed
    assert list(current) == [b"abcde", b"fghij"]  # the committed attempt reads on
    assert list(stale) == []  # the other is over
    assert list(replay.view()) == []


def test_the_callers_iterator_failing_fails_every_attempt_after() -> None:
    def requests():  # type: ignore[no-untyped-def]
        yield b"a"
        raise ValueError("the caller's iterator broke")

    replay = ReplayedRequests(requests(), None, limit=100)
    with pytest.raises(ValueError, match="broke"):
        list(replay.view())
    view = replay.view()
    assert next(view) == b"a"
    with pytest.raises(ValueError, match="broke"):
        next(view)


def test_the_buffer_counts_serialized_bytes() -> None:
    replay = ReplayedRequests(iter([b"123", b"456"]), lambda request: request * 3, limit=17)
    assert list(replay.view()) == [b"123", b"456"]  # 9 + 9 = 18 bytes on the wire
    assert replay.committed
