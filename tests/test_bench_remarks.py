"""The benchmark report's prose is true of the tables it speaks of (no benchmark runs here)."""

from __future__ import annotations

from bench._common import Section
from bench.fleet import LAST_ANSWER, RECEIVED, RECEIVED_TARGET
from bench.remarks import (
    A105_4,
    A105_16,
    NAIVE,
    PLAIN,
    POOL4,
    POOL4_VS_A105,
    POOL16,
    POOL16_VS_ONE,
    compare,
    why_missed,
)
from bench.throughput import CAPPED_COLUMNS

ON = "overload protection on (grpc default)"
OFF = "overload protection off"


def capped(
    overload: str, *, pool4: float, a105: float, refused: tuple[int, int] = (0, 0)
) -> Section:
    """A stream-capped table as bench.throughput makes it, with the pool of 16 passing."""
    section = Section(f"Stream-capped throughput, {overload}", list(CAPPED_COLUMNS))
    plain = 400.0
    rates = {PLAIN: plain, POOL4: pool4, POOL16: 4900.0, A105_4: a105, A105_16: 1900.0}
    refusals = {POOL4: refused[0], A105_4: refused[1]}
    for label, rate in {**rates, NAIVE: plain}.items():
        section.add(label, rate, rate / plain, refusals.get(label, 0), 0, 1.0, 2.0, 1, 50.0, 90.0)
    section.check(POOL4_VS_A105, pool4 / a105, ">= 0.95", pool4 / a105 >= 0.95)
    section.check(POOL16_VS_ONE, 12.25, ">= 12", True)
    return section


def pool4_remark(on: Section, off: Section, under: str) -> str:
    """The explanation of the pool of 4 / A105 N=4 miss in the table ``under``."""
    text = why_missed([on, off], cpu_limit=5000.0, ceiling=5000.0, cores=2)
    start = f"- **Pool of 4 against A105 N=4, {under}.**"
    (line,) = [line for line in text.splitlines() if line.startswith(start)]
    return line


def test_a_miss_with_refusals_cites_the_refusals_of_its_own_table() -> None:
    on = capped(ON, pool4=1400.0, a105=1500.0, refused=(1254, 1685))
    off = capped(OFF, pool4=1560.0, a105=1600.0)
    remark = pool4_remark(on, off, ON)
    assert "0.93" in remark
    assert "refused streams" in remark
    assert "pool of 4 1,254, A105 N=4 1,685" in remark
    assert f"With {OFF}, the same ratio was 0.97 (level within 5%)." in remark
    text = why_missed([on, off], cpu_limit=5000.0, ceiling=5000.0, cores=2)
    assert f"A105 N=4, {OFF}" not in text  # that table passed: nothing to explain


def test_a_miss_without_refusals_claims_none_and_calls_nothing_level_that_was_not() -> None:
    on = capped(ON, pool4=1536.0, a105=1600.0, refused=(900, 1100))
    off = capped(OFF, pool4=1504.0, a105=1600.0)
    remark = pool4_remark(on, off, OFF)
    assert "0.94" in remark
    assert "No call was refused in this table" in remark
    assert "refused streams" not in remark
    assert f"With {ON}, the same ratio was 0.96 (level within 5%)." in remark
    assert "the two are level" not in remark


def test_the_other_tables_ratio_is_named_as_it_was_when_it_was_not_level() -> None:
    on = capped(ON, pool4=1360.0, a105=1600.0, refused=(10, 0))
    off = capped(OFF, pool4=1440.0, a105=1600.0)
    remark = pool4_remark(on, off, ON)
    assert f"With {OFF}, the same ratio was 0.90 (A105 ahead, and short of the target" in remark
    assert "level" not in remark


def test_targets_that_pass_get_no_explanation() -> None:
    on = capped(ON, pool4=1600.0, a105=1600.0)
    off = capped(OFF, pool4=1650.0, a105=1600.0)
    assert why_missed([on, off], cpu_limit=5000.0, ceiling=5000.0, cores=2) == ""


def test_a_miss_nothing_explains_is_reported_as_unexplained() -> None:
    section = Section("Overhead when nothing is capped", ["client", "p50 us"])
    section.check("pool p50 / plain p50", 1.2, "<= 1.05", False)
    text = why_missed([section], cpu_limit=5000.0, ceiling=5000.0, cores=2)
    assert "1.20 against a target of <= 1.05; nothing in this run explains it" in text


def test_two_throughputs_are_level_only_within_five_percent() -> None:
    assert compare(1545.6, 1605.3, "the pool", "A105") == "the pool was level with A105 (within 5%)"
    assert compare(1714.2, 1947.3, "the pool", "A105") == "A105 did 1.14 times what the pool did"
    assert compare(1949.1, 1596.2, "the pool", "A105") == "the pool did 1.22 times what A105 did"


def rolling(pool_errors: str, rr_errors: str) -> Section:
    """A rolling-restart table as bench.fleet makes it."""
    columns = ["client", "calls/s", "p50 ms", "p99 ms", "share per replica", "errors"]
    section = Section(
        "Fleet (c): rolling restarts, each replica SIGKILLed and restarted in turn, "
        "1 s apart, 12 kills per client, 200 callers",
        columns,
    )
    section.add("conngrpc pool of 6", 1600.0, 100.0, 270.0, "33% / 33% / 33%", pool_errors)
    section.add("grpc round_robin + health", 2000.0, 90.0, 200.0, "33% / 33% / 33%", rr_errors)
    ours = sum(int(p.rsplit(" ", 1)[1].replace(",", "")) for p in pool_errors.split(", "))
    theirs = sum(int(p.rsplit(" ", 1)[1].replace(",", "")) for p in rr_errors.split(", "))
    section.check("failed calls, pool / round_robin", ours / theirs, "<= 1.00", ours <= theirs)
    return section


def test_a_rolling_restart_miss_gives_per_kill_figures_from_its_own_table() -> None:
    text = why_missed([rolling("UNAVAILABLE 600", "UNAVAILABLE 240")], 5000.0, 5000.0, 2)
    assert "Every failed call in this table is UNAVAILABLE" in text
    assert "the pool lost 600 (50 a kill) and round_robin 240 (20 a kill)" in text


def test_a_rolling_restart_miss_with_other_errors_names_them_instead() -> None:
    text = why_missed(
        [rolling("UNAVAILABLE 600, DEADLINE_EXCEEDED 12", "UNAVAILABLE 240")], 5000.0, 5000.0, 2
    )
    assert "Every failed call" not in text
    assert "The failed calls were: DEADLINE_EXCEEDED, UNAVAILABLE." in text


def test_a_rolling_restart_that_passes_is_not_explained() -> None:
    assert why_missed([rolling("UNAVAILABLE 100", "UNAVAILABLE 240")], 5000.0, 5000.0, 2) == ""


def not_serving(pool: int, rr: int, pool_last: str, rr_last: str = "6 ms") -> Section:
    """A NOT_SERVING table as bench.fleet makes it: 3 s, twice per client."""
    columns = ["client", "calls/s", "p50 ms", "p99 ms", "share per replica", "errors"]
    columns += [RECEIVED, LAST_ANSWER]
    section = Section(
        "Fleet (b): one replica turns NOT_SERVING for 3 s, 2 time(s) per client", columns
    )
    shares = "20% / 40% / 40%"
    section.add("conngrpc pool of 6", 1600.0, 6.0, 9.0, shares, "0", pool, pool_last)
    section.add("grpc round_robin + health", 2000.0, 5.5, 8.0, shares, "0", rr, rr_last)
    section.add("grpc pick_first", 2100.0, 5.4, 7.0, "100% / 0% / 0%", "0", 0, "none")
    section.check(RECEIVED_TARGET, pool, "0", pool == 0, f"round_robin's: {rr:,}")
    return section


def test_calls_to_a_not_serving_replica_just_after_the_flip_are_explained() -> None:
    text = why_missed([not_serving(14, 5, "7 ms")], 5000.0, 5000.0, 2)
    assert "It was NOT_SERVING 2 time(s), 3 s each" in text
    assert "it received 14 call(s) from the pool (counted by the server; target 0)" in text
    assert "and 5 from round_robin + health" in text
    assert "The pool sent it 2.8 times what round_robin did." in text
    assert "last answer from it came 7 ms after a flip (round_robin's: 6 ms)" in text
    assert "every answer from it came in the first 7 ms of the 3 s" in text
    assert "well after the flip" not in text


def test_calls_to_a_not_serving_replica_long_after_the_flip_are_called_what_they_are() -> None:
    text = why_missed([not_serving(900, 5, "2,950 ms")], 5000.0, 5000.0, 2)
    assert "last answer from it came 2,950 ms after a flip" in text
    assert "the pool went on sending it calls well after the flip" in text
    assert "every answer from it came in the first" not in text


def test_a_not_serving_miss_where_round_robin_sent_nothing_says_the_pool_trails() -> None:
    text = why_missed([not_serving(3, 0, "5 ms", rr_last="none")], 5000.0, 5000.0, 2)
    assert "and 0 from round_robin + health" in text
    assert "round_robin kept every call off it, so the pool trails it here." in text
    assert "(round_robin's: none)" in text
    level = why_missed([not_serving(3, 3, "5 ms")], 5000.0, 5000.0, 2)
    assert "The pool sent it no more than round_robin did." in level
    unanswered = why_missed([not_serving(2, 5, "none")], 5000.0, 5000.0, 2)
    assert "No answer from it reached the pool after a flip." in unanswered


def test_a_not_serving_replica_that_received_nothing_from_the_pool_is_not_explained() -> None:
    assert why_missed([not_serving(0, 5, "4 ms")], 5000.0, 5000.0, 2) == ""
