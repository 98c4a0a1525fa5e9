"""The benchmark report's PASS/MISS and its tables, on made-up runs (no benchmark runs here)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from bench._common import Section, Target, summary
from bench.fleet import RR, no_more_than
from bench.outliers import (
    CONFIGURED,
    DEFAULT,
    OD,
    SCENARIOS,
    Ejections,
    Outcome,
    scenario_table,
)
from bench.outliers import RR as OUTLIERS_RR
from bench.pooled import (
    A105,
    CAPPED_POOL,
    PLAIN_POOL,
    SLOW_POOLED,
    SLOW_RR,
    Run,
    cap_table,
    mixed_table,
    slow_table,
)
from bench.retries import (
    POOL_HEDGE,
    POOL_PLAIN,
    POOL_RETRY,
    RR_HEDGE,
    RR_PLAIN,
    RR_RETRY,
    cost_table,
    hedging_table,
    rolling_table,
)
from bench.sync import A105 as SYNC_A105
from bench.sync import (
    FEW,
    HAND_MADE,
    MANY_POOL,
    MANY_SUBSCRIBED,
    ONE_CHANNEL,
    SYNC_POOL,
    threads_table,
)
from bench.sync import cap_table as sync_cap_table
from bench.throughput import CAPPED_COLUMNS, capped_targets


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [
        (">=", 0.95, True),
        (">=", 0.9499, False),
        (">", 0.0, False),
        (">", 0.001, True),
        ("<=", 1.05, True),
        ("<=", 1.0501, False),
        ("<", 1.0, False),
        ("<", 0.99, True),
        ("=", 0.0, True),
        ("=", 1.0, False),
    ],
)
def test_an_absolute_target_compares_the_figure_with_its_bound(
    op: str, value: float, passed: bool
) -> None:
    bound = {">=": 0.95, ">": 0.0, "<=": 1.05, "<": 1.0, "=": 0.0}[op]
    assert Target("figure", value, op, bound).passed is passed


def test_a_target_with_a_reference_compares_the_ratio_to_it() -> None:
    met = Target("pool of 4, calls/s", 1676.0, ">=", 0.95, "A105 N=4", 1713.4)
    assert met.value == pytest.approx(0.978, abs=1e-3)
    assert met.passed
    missed = Target("pool of 4, calls/s", 1592.9, ">=", 0.95, "A105 N=4", 1700.5)
    assert missed.value == pytest.approx(0.937, abs=1e-3)
    assert not missed.passed


@pytest.mark.parametrize(
    ("measured", "against"), [(float("nan"), None), (float("nan"), 10.0), (5.0, 0.0)]
)
def test_nothing_measured_is_a_miss(measured: float, against: float | None) -> None:
    reference = "" if against is None else "one plain channel"
    assert Target("figure", measured, "<=", 1e9, reference, against).result == "MISS"
    assert Target("figure", measured, ">=", -1e9, reference, against).result == "MISS"


def test_a_target_refuses_an_unknown_comparison_or_a_reference_without_its_figure() -> None:
    with pytest.raises(ValueError, match="op must be one of"):
        Target("figure", 1.0, "=>", 1.0)
    with pytest.raises(ValueError, match="a reference needs its figure"):
        Target("figure", 1.0, "<=", 1.0, "one plain channel")
    with pytest.raises(ValueError, match="a reference needs its figure"):
        Target("figure", 1.0, "<=", 1.0, "", 2.0)


def test_a_section_prints_its_table_then_each_target_with_reference_ratio_and_result() -> None:
    section = Section("Start-up", ["channels", "pool ms", "plain ms"])
    section.add(64, 46.6, 23.3)
    section.target("pool of 64, median ms", 46.6, "<=", 3.0, "64 plain channels", 23.3)
    section.target("median kill -> NotConnectedError, ms", 7.35, "<=", 500)
    section.notes.append("Median of 9 starts.")
    assert section.markdown() == (
        "## Start-up\n"
        "\n"
        "| channels | pool ms | plain ms |\n"
        "|---|---|---|\n"
        "| 64 | 46.6 | 23.3 |\n"
        "\n"
        "| target | measured | set against (same run) | ratio | required | result |\n"
        "|---|---|---|---|---|---|\n"
        "| pool of 64, median ms | 46.6 | 64 plain channels: 23.3 | 2.00 | <= 3 | PASS |\n"
        "| median kill -> NotConnectedError, ms | 7.35 | - | - | <= 500 | PASS |\n"
        "\n"
        "Median of 9 starts.\n"
    )
    assert (
        "  pool of 64, median ms: 46.6 / 64 plain channels: 23.3 = 2.00 (required <= 3) PASS"
        in (section.text())
    )


def test_the_summary_names_each_targets_benchmark() -> None:
    first, second = Section("First", ["a"]), Section("Second", ["b"])
    first.target("x", 1.0, "<", 2000)
    second.target("y", 3.0, "=", 0)
    assert summary([first, second]).splitlines()[2:] == [
        "| First | x | 1.00 | - | - | < 2,000 | PASS |",
        "| Second | y | 3.00 | - | - | = 0 | MISS |",
    ]


# --- the stream-capped table: scaling against one channel, or the ceiling -------------------


def capped(rates: dict[str, float], ceiling: float) -> list[Target]:
    section = Section("Stream-capped throughput, overload protection off", list(CAPPED_COLUMNS))
    capped_targets(section, rates, ceiling)
    return section.targets


RATES = {  # the run of 2026-12-03, overload protection on
    "one plain channel": 426.9,
    "conngrpc pool of 4": 1592.9,
    "conngrpc pool of 16": 2574.4,
    "A105 N=4": 1700.5,
}


def test_a_pool_is_set_against_the_ceiling_where_linear_scaling_would_pass_it() -> None:
    pool4, pool4_a105, pool16 = capped(RATES, ceiling=2751.0)
    # 4 x one channel (1,708) is within the ceiling: 0.875 of it is the bound.
    assert (pool4.reference, pool4.bound) == ("4 x one plain channel", 0.875)
    assert pool4.against == pytest.approx(1707.6)
    assert pool4.passed
    assert (pool4_a105.reference, pool4_a105.result) == ("A105 N=4", "MISS")  # 0.94
    # 0.75 x 16 x one channel (5,123) is beyond the ceiling: 0.95 of the ceiling is the bound.
    assert (pool16.reference, pool16.against, pool16.bound) == ("the no-cap ceiling", 2751.0, 0.95)
    assert pool16.value == pytest.approx(0.936, abs=1e-3)
    assert not pool16.passed


def test_on_a_machine_with_room_the_pool_of_16_is_held_to_linear_scaling() -> None:
    rates = {**RATES, "conngrpc pool of 16": 5200.0}
    *_, pool16 = capped(rates, ceiling=8000.0)
    assert (pool16.reference, pool16.bound) == ("16 x one plain channel", 0.75)
    assert pool16.passed  # 5,200 >= 0.75 x 6,830 = 5,123
    *_, slower = capped({**rates, "conngrpc pool of 16": 5000.0}, ceiling=8000.0)
    assert not slower.passed
    *_, short = capped({**rates, "conngrpc pool of 16": 5000.0}, ceiling=5200.0)
    assert short.reference == "the no-cap ceiling"  # 0.95 x 5,200 = 4,940: below 5,123
    assert short.passed


# --- the fleet: the pool against grpc round_robin + health ----------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "result"), [(10, 10, "PASS"), (599, 585, "PASS"), (620, 585, "MISS")]
)
def test_the_pools_failures_are_level_with_round_robins_within_five_percent(
    ours: int, theirs: int, result: str
) -> None:
    section = Section("Fleet (c)", ["client"])
    no_more_than(section, "failed calls, pool", ours, theirs)
    (target,) = section.targets
    assert (target.reference, target.against, target.result) == (RR, theirs, result)


def test_where_round_robin_had_none_the_pool_must_have_none() -> None:
    section = Section("Fleet (b)", ["client"])
    no_more_than(section, "calls it received while NOT_SERVING, pool", 0, 0)
    no_more_than(section, "calls it received while NOT_SERVING, pool", 3, 0)
    met, missed = section.targets
    assert met.against is None
    assert met.name.endswith(f"({RR}: 0)")
    assert (met.result, missed.result) == ("PASS", "MISS")


# --- the PooledChannel's tables, built from each client's run --------------------------------


def run_of(rate: float, p50_ms: float, p99_ms: float, **errors: int) -> Run:
    """A run of 100 calls at ``rate`` calls/s with this p50 and p99."""
    latencies = [p50_ms / 1000] * 98 + [p99_ms / 1000] * 2
    return Run(latencies=latencies, short=latencies, errors=Counter(errors), seconds=100 / rate)


def test_the_stream_cap_table_matches_a105_within_five_percent() -> None:
    plain, rr = run_of(1641.6, 111.1, 132.5), run_of(1665.2, 109.7, 169.8)
    runs = {
        CAPPED_POOL: run_of(1626.4, 120.3, 165.3, UNAVAILABLE=54),
        PLAIN_POOL: plain,
        A105: run_of(1693.8, 108.8, 122.2, UNAVAILABLE=1667),
        "get_channel round-robin, pool of 4": rr,
    }
    section = cap_table("overload protection on (grpc default)", [], runs, 3, 3.0)
    rate, p99, refused, learnt = section.targets
    assert (rate.reference, rate.result) == (A105, "PASS")  # 0.96
    assert (p99.measured, p99.against, p99.result) == (165.3, 122.2, "MISS")  # 1.35
    assert section.rows[0][4] == "UNAVAILABLE 54"
    # the pool with no cap set, which learns the server's: it refused none of 1,667
    assert (refused.measured, refused.against, refused.result) == (0, 1667, "PASS")
    assert (learnt.reference, learnt.result) == (A105, "MISS")  # 1641.6 / 1693.8 = 0.97
    plain.errors["UNAVAILABLE"] = 34  # 2.04% of A105's
    assert cap_table("on", [], runs, 3, 3.0).targets[2].result == "MISS"
    # overload protection off: no stream is refused, nothing to learn from
    assert len(cap_table("overload protection off", ["--option", "x"], runs, 3, 3.0).targets) == 2
    mixed = mixed_table("overload protection off", [], runs, 3, 3.0)
    assert [(t.reference, t.result) for t in mixed.targets] == [
        (A105, "MISS"),  # 165.3 ms against 122.2 ms
        ("get_channel round-robin, pool of 4", "PASS"),  # 165.3 ms against 169.8 ms
    ]


def test_the_slow_replica_table_checks_calls_per_second_and_both_sides_of_the_share() -> None:
    slow = b"50003"
    rr = run_of(351.7, 23.3, 205.2)
    rr.by_answer = Counter({slow: 33, b"50001": 33, b"50002": 34})
    pooled = run_of(878.3, 23.5, 205.8)
    for share, results in ((6, ["PASS", "PASS", "PASS"]), (12, ["PASS", "MISS", "PASS"])):
        pooled.by_answer = Counter({slow: share, b"50001": 50, b"50002": 44})
        runs = {SLOW_POOLED: pooled, SLOW_RR: rr, "get_channel round-robin, pool of 6": rr}
        section = slow_table(runs, slow, 30, 2, 4.0)
        assert [t.result for t in section.targets] == results
    pooled.by_answer = Counter({b"50001": 50, b"50002": 50})
    untried = slow_table({SLOW_POOLED: pooled, SLOW_RR: rr}, slow, 30, 2, 4.0)
    assert [t.result for t in untried.targets] == ["PASS", "PASS", "MISS"]


# --- outliers: one bad replica of three ---------------------------------------------------------

BAD = 50003


def outcome_of(run: Run, *shares: int, error: str = "") -> Outcome:
    """A client's run whose replicas (50001, 50002, the bad 50003) received ``shares``."""
    received = dict(zip((50001, 50002, BAD), shares, strict=True))
    return Outcome(run=run, bad=BAD, received=received, error=error)


def test_a_pool_that_could_not_run_is_a_row_whose_targets_miss() -> None:
    outcomes = {
        DEFAULT: outcome_of(run_of(1300.0, 22.5, 26.0, INTERNAL=1), 50, 50, 1),
        CONFIGURED: outcome_of(Run(), 0, 0, 0, error="TypeError: Pool: unknown setting"),
        OUTLIERS_RR: outcome_of(run_of(1290.0, 22.0, 28.0, INTERNAL=50), 50, 50, 50),
        OD: outcome_of(run_of(1250.0, 22.8, 41.0, INTERNAL=8), 50, 50, 8),
    }
    section = scenario_table(SCENARIOS[0], outcomes, 12.0)  # fails every call, INTERNAL
    assert [row[0] for row in section.rows] == list(outcomes)
    assert section.rows[1][6] == "not run: TypeError: Pool: unknown setting"
    assert [(t.name.split(",")[0], t.result) for t in section.targets] == [
        ("failed %", "MISS"),  # the configured pool's, not measured
        ("successful calls/s", "MISS"),  # ditto
        ("failed %", "PASS"),  # the default's 1% against grpc's outlier detection's 7.4%
        ("the bad replica's share %", "PASS"),  # 1% against round_robin's 33%
    ]


def test_deadline_calls_are_told_apart_by_the_pools_ejections() -> None:
    # The bad replica is out from 1 s to 6 s; another backend's ejection does not count.
    ejections = Ejections(
        events=[
            (1.0, f"127.0.0.1:{BAD}", True),
            (3.0, "127.0.0.1:50001", True),
            (6.0, f"127.0.0.1:{BAD}", False),
        ]
    )
    run = Run(deadline_starts=[0.5, 2.0, 7.0])
    pool = Outcome(run=run, bad=BAD, ejections=ejections)
    assert (pool.late(), pool.while_ejected()) == (2, 1)
    grpc = Outcome(run=run, bad=BAD)  # no ejections to read: not measured
    assert math.isnan(grpc.late())
    assert math.isnan(grpc.while_ejected())
    never = Outcome(run=run, bad=BAD, ejections=Ejections())  # a pool that ejected none
    assert math.isnan(never.late())
    assert never.while_ejected() == 0


# --- retries and hedging: the pool and grpc given the same service config ----------------------


def test_the_rolling_restart_wants_no_failed_call_through_the_pool_at_grpcs_rate() -> None:
    runs = {  # two rounds each; the pool retries on the connection that died
        RR_RETRY: [run_of(1841.0, 6.0, 20.0)] * 2,
        RR_PLAIN: [run_of(1800.0, 6.0, 20.0, UNAVAILABLE=123)] * 2,
        POOL_RETRY: [
            run_of(1500.0, 6.0, 20.0, UNAVAILABLE=128),
            run_of(1706.0, 6.0, 20.0, UNAVAILABLE=2),
        ],
        POOL_PLAIN: [run_of(1600.0, 6.0, 20.0, UNAVAILABLE=131)] * 2,
    }
    section = rolling_table(runs, 6, 10.0)
    assert "6 kills in 10 s, 2 round(s) per client" in section.title
    assert [row[0] for row in section.rows] == list(runs)
    assert section.rows[2][1:4] == ["130", "UNAVAILABLE 130", "128 / 2"]
    failed, rate = section.targets
    assert (failed.measured, failed.result) == (130, "MISS")
    # 200 calls in 0.0667 + 0.0586 s: 1,596/s, against 1,841/s
    assert (rate.reference, rate.result) == (RR_RETRY, "MISS")
    assert rate.value == pytest.approx(0.867, abs=1e-3)
    runs[POOL_RETRY] = [run_of(1760.0, 6.0, 20.0)] * 2  # none failed, at 0.956 of grpc's rate
    assert [t.result for t in rolling_table(runs, 6, 10.0).targets] == ["PASS", "PASS"]


def hedged(p99_ms: float, received: int, **errors: int) -> Outcome:
    """A client's run of 100 answered calls (and ``errors``) with this p99, of which the
    replicas received ``received``."""
    run = run_of(1000.0, 21.0, p99_ms, **errors)
    return Outcome(run=run, received={50001: received // 2, 50002: received - received // 2})


def test_hedging_halves_the_pools_p99_against_both_at_a_bounded_share_of_extra_calls() -> None:
    outcomes = {
        POOL_HEDGE: hedged(74.0, 112),
        POOL_PLAIN: hedged(273.5, 100),
        RR_HEDGE: hedged(272.0, 100),
    }
    section = hedging_table(outcomes, 2, 6.0)
    assert section.rows[0][5:] == ["100", "112", "12.0"]  # made, received, extra %
    assert [(t.reference, t.result) for t in section.targets] == [
        (POOL_PLAIN, "PASS"),  # 74 ms against 273.5 ms: 0.27
        (RR_HEDGE, "PASS"),
        ("", "PASS"),  # no failed call
        ("calls its callers made", "PASS"),  # 1.12
    ]
    outcomes[POOL_HEDGE] = hedged(272.3, 120, DEADLINE_EXCEEDED=1)  # hedges ignored
    section = hedging_table(outcomes, 2, 6.0)
    assert section.rows[0][5:] == ["101", "120", "18.8"]
    assert [t.result for t in section.targets] == ["MISS"] * 4


def test_a_retry_policys_cost_is_the_median_round_not_one_slow_round() -> None:
    def rounds(ours: list[float], theirs: list[float]) -> dict[str, list[Run]]:
        return {
            POOL_RETRY: [run_of(rate, 20.0, 30.0) for rate in ours],
            POOL_PLAIN: [run_of(rate, 20.0, 30.0) for rate in theirs],
        }

    section = cost_table(rounds([4700.0, 3000.0, 4800.0], [4900.0, 4850.0, 4950.0]), 3.0)
    assert [row[:3] for row in section.rows] == [
        [POOL_RETRY, "4,700.0", "20.0"],
        [POOL_PLAIN, "4,900.0", "20.0"],
    ]
    (rate,) = section.targets
    assert (rate.reference, rate.result) == (POOL_PLAIN, "PASS")  # 0.96
    slower = cost_table(rounds([4500.0, 4600.0, 4400.0], [4900.0, 4850.0, 4950.0]), 3.0)
    assert slower.targets[0].result == "MISS"  # 0.92


# --- conngrpc.sync: the sync pool against grpc's sync channels ---------------------------------


def test_the_sync_stream_cap_wants_the_pools_rate_against_both_and_its_cpu_per_call() -> None:
    def cpu_of(run: Run, us_per_call: float) -> Run:
        run.client_cpu = us_per_call * len(run.latencies) / 1e6
        return run

    runs = {
        SYNC_POOL: cpu_of(run_of(1780.8, 55.3, 72.5), 230.4),
        HAND_MADE: cpu_of(run_of(1750.2, 55.8, 81.7), 194.8),
        SYNC_A105: cpu_of(run_of(1774.6, 55.0, 79.2), 197.4),
        ONE_CHANNEL: cpu_of(run_of(441.3, 225.4, 239.4), 239.9),
    }
    section = sync_cap_table(runs, 3, 3.0)
    assert section.rows[0][-1] == "230.4"  # client CPU us per call
    assert [(t.reference, t.result) for t in section.targets] == [
        (HAND_MADE, "PASS"),  # 1.02
        (SYNC_A105, "PASS"),  # 1.00
        (HAND_MADE, "MISS"),  # 230.4 us against 194.8 us: 1.18
    ]
    runs[SYNC_POOL] = cpu_of(run_of(1700.0, 55.3, 72.5), 220.0)  # 0.97 of the hand-made's rate
    assert [t.result for t in sync_cap_table(runs, 3, 3.0).targets] == ["MISS", "MISS", "PASS"]


def test_the_threads_a_sync_pool_adds_are_a_few() -> None:
    #  Python: before, connected, under load, after; then the OS's
    pool = [2.0, 3.0, 3.0, 2.0, 2.0, 9.0, 9.0, 2.0]
    subscribed = [2.0, 103.0, 102.0, 2.0, 2.0, 108.0, 108.0, float("nan")]
    measured = {MANY_POOL: (pool, run_of(1661.8, 20.5, 30.0)), MANY_SUBSCRIBED: (subscribed, Run())}
    section = threads_table(measured, 3.0)
    assert section.rows[1][1:9] == ["2", "103", "102", "2", "2", "108", "108", "-"]
    (added,) = section.targets
    assert (added.measured, added.result) == (1.0, "PASS")
    pool[2] = 2.0 + FEW + 1  # a thread per channel, say, would be far more
    assert threads_table(measured, 3.0).targets[0].result == "MISS"
