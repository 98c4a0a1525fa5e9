"""The benchmark report's prose is true of the tables it speaks of (no benchmark runs here)."""

from __future__ import annotations

from collections import Counter

from bench._common import Section
from bench.fleet import LAST_ANSWER, RECEIVED, RECEIVED_TARGET
from bench.pooled import (
    A105,
    CAPPED_POOL,
    PLAIN_POOL,
    SLOW_POOLED,
    SLOW_RR,
    STREAM_CAP,
    Run,
    cap_table,
    mixed_table,
    slow_table,
)
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


# --- the PooledChannel's tables (bench.pooled builds them from each client's run) ---------


def run_of(
    rate: float, p50_ms: float, p99_ms: float, cpu: tuple[float, float] = (50, 50), **errors: int
) -> Run:
    """A run of 100 calls at ``rate`` calls/s with this p50 and p99, and this client and
    server CPU (% of one core)."""
    latencies = [p50_ms / 1000] * 98 + [p99_ms / 1000] * 2
    seconds = 100 / rate
    return Run(
        latencies=latencies,
        short=latencies,
        errors=Counter(errors),
        seconds=seconds,
        client_cpu=cpu[0] / 100 * seconds,
        server_cpu=cpu[1] / 100 * seconds,
    )


def stream_cap_tables(
    condition: str, capped: Run, a105: Run, plain: Run | None = None
) -> tuple[Section, Section]:
    plain = plain or run_of(1800.0, 110.0, 150.0, (60, 88))
    rr = run_of(1700.0, 115.0, 210.0, (58, 86))
    runs = {CAPPED_POOL: capped, PLAIN_POOL: plain, A105: a105, "get_channel round-robin": rr}
    args = [] if condition == ON else ["--option", "grpc.http.overload_protection=0"]
    return cap_table(condition, args, runs, 3, 3.0), mixed_table(condition, args, runs, 3, 3.0)


def stream_cap_remark(sections: list[Section], condition: str) -> str:
    start = f"- **{STREAM_CAP}: one server capped at 10 streams per connection, 20 ms calls,"
    text = why_missed(sections, cpu_limit=5000.0, ceiling=5000.0, cores=2)
    (line,) = [line for line in text.splitlines() if line.startswith(start) and condition in line]
    return line


def test_a_stream_cap_miss_gives_the_ceiling_the_refusals_and_the_other_condition() -> None:
    on, _ = stream_cap_tables(
        ON,
        run_of(1900.0, 105.0, 140.0, (69, 89), UNAVAILABLE=12),
        run_of(1960.0, 100.0, 130.0, (57, 92), UNAVAILABLE=30),
    )
    off, _ = stream_cap_tables(OFF, run_of(1950.0, 100.0, 120.0), run_of(1950.0, 100.0, 125.0))
    remark = stream_cap_remark([on, off], ON)
    assert "Calls/s 0.97 of A105's (1,900.0 against 1,960.0; target >= 1.00)" in remark
    assert "p99 1.08 of A105's (140.0 ms against 130.0 ms; target <= 1.00)" in remark
    assert "4 connections of 10 streams each carry at most 40 calls at once" in remark
    assert "top out at 2,000 calls/s: A105 reached 98% of that and the capped" in remark
    assert "PooledChannel 95%" in remark
    assert "level within 5%" in remark
    assert "client 69 (capped PooledChannel) and 57 (A105), server 89 and 92." in remark
    assert "was at 86% or more in every row, and no client came near 2,000 calls/s" in remark
    assert "the 12 points of client CPU the capped PooledChannel spends beyond A105" in remark
    assert (
        "Failed calls: UNAVAILABLE 12 (capped PooledChannel), UNAVAILABLE 30 (A105 N=4)" in remark
    )
    assert f"The {PLAIN_POOL} (no cap of its own) did 1,800.0 calls/s, p99 150.0 ms" in remark
    assert f"With {OFF}, the same ratios were 1.00 (calls/s) and 0.96 (p99)." in remark
    text = why_missed([on, off], cpu_limit=5000.0, ceiling=5000.0, cores=2)
    assert f"20 ms calls, 200 callers, {OFF}: the capped" not in text  # that one passed
    assert "nothing in this run explains it" not in text


def test_a_stream_cap_miss_without_failures_and_out_of_level_says_so() -> None:
    off, _ = stream_cap_tables(OFF, run_of(1500.0, 130.0, 180.0), run_of(1900.0, 100.0, 125.0))
    remark = stream_cap_remark([off], OFF)
    assert "Calls/s 0.79 of A105's" in remark
    assert "server 50 and 50." in remark
    assert "set these rates" not in remark  # the server was not busy
    assert "No call failed in this table, so refusals do not explain the gap." in remark
    assert "level" not in remark
    assert "With overload" not in remark


def test_a_mixed_length_miss_lists_every_clients_short_calls() -> None:
    _, mixed = stream_cap_tables(OFF, run_of(900.0, 6.0, 90.0), run_of(900.0, 6.0, 80.0))
    text = why_missed([mixed], cpu_limit=5000.0, ceiling=5000.0, cores=2)
    assert f"Missed: short p99: PooledChannel / {A105} 1.12 (target < 1.00)." in text
    assert "get_channel round-robin:" in text  # listed, though that ratio passed (90 < 210)
    assert "Missed: short p99: PooledChannel / get_channel" not in text
    assert f"{CAPPED_POOL}: p50 6.0 ms, p99 90.0 ms, errors none" in text
    passing, _ = stream_cap_tables(OFF, run_of(1950.0, 100.0, 120.0), run_of(1950.0, 100.0, 125.0))
    _, fine = stream_cap_tables(OFF, run_of(900.0, 6.0, 70.0), run_of(900.0, 6.0, 80.0))
    assert why_missed([passing, fine], cpu_limit=5000.0, ceiling=5000.0, cores=2) == ""


def slow_section(pooled: Run, rr: Run) -> Section:
    slow = b"50003"
    runs = {SLOW_POOLED: pooled, SLOW_RR: rr, "get_channel round-robin, pool of 6": rr}
    rr.by_answer = Counter({slow: 33, b"50001": 33, b"50002": 34})
    return slow_table(runs, slow, 30, 2, 4.0)


def test_a_slow_replica_miss_names_both_ratios_and_the_time_beyond_the_replicas_delay() -> None:
    pooled = run_of(900.0, 24.5, 205.0)
    pooled.by_answer = Counter({b"50003": 12, b"50001": 44, b"50002": 44})
    text = why_missed([slow_section(pooled, run_of(375.0, 30.0, 205.0))], 5000.0, 5000.0, 2)
    assert "PooledChannel / grpc round_robin, calls/s 2.40 (met; target >= 2.40)" in text
    assert "slow replica's share through the PooledChannel 0.12 (missed; target" in text
    assert "the slow replica's share, in the same order: 12.0%, 33.0%, 33.0%" in text
    assert (
        "Through the PooledChannel, pool of 6, p50 was 24.5 ms, against the 20 ms its fast"
        " replicas add to a call" in text
    )
    assert "the 4.5 ms more are" in text
    fine = run_of(900.0, 24.5, 205.0)
    fine.by_answer = Counter({b"50003": 5, b"50001": 47, b"50002": 48})
    assert why_missed([slow_section(fine, run_of(375.0, 30.0, 205.0))], 5e3, 5e3, 2) == ""
