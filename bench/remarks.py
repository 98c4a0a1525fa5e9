"""The report's prose: every sentence is worked out from the table it speaks of.

Nothing here measures; each function takes the sections of one run and returns
markdown, so a unit test can feed it made-up tables and check that what it says is
true of them.
"""

from __future__ import annotations

from ._common import Ratio, Section
from .connection_cap import CAP_ARGUMENT, DEFAULT_CAP
from .fleet import LAST_ANSWER, RECEIVED, RECEIVED_TARGET
from .pooled import (
    A105,
    CAPPED_POOL,
    CPU_COLUMNS,
    MIXED,
    PLAIN_POOL,
    POOLED_CAP_VS_A105,
    POOLED_P99_VS_A105,
    SLOW,
    STREAM_CAP,
)

#: Two figures within this share of each other are called level.
LEVEL = 0.05

CAPPED = "Stream-capped throughput"
PLAIN = "one plain channel"
POOL4 = "conngrpc pool of 4"
POOL16 = "conngrpc pool of 16"
A105_4 = "A105 N=4"
A105_16 = "A105 N=16"
NAIVE = "4 naive channels, identical args"
POOL4_VS_A105 = "pool of 4 / A105 N=4"
POOL16_VS_ONE = "pool of 16 / one channel"


def number(text: str) -> float:
    return float(text.replace(",", ""))


def find(sections: list[Section], title_start: str) -> Section:
    return next(s for s in sections if s.title.startswith(title_start))


def cell(section: Section, row: str, column: str) -> str:
    """The cell of ``section``'s table in the row labelled ``row`` and the named column."""
    index = section.columns.index(column)
    return next(r for r in section.rows if r[0] == row)[index]


def value(section: Section, row: str, column: str) -> float:
    return number(cell(section, row, column))


def ratio(section: Section, name: str) -> Ratio:
    return next(r for r in section.ratios if r.name == name)


def is_level(measured: float) -> bool:
    return abs(measured - 1) <= LEVEL


def condition(section: Section) -> str:
    """'overload protection off' from a stream-capped section's title."""
    return section.title.split(", ", 1)[1]


def _pool16_note(section: Section, cpu_limit: float, ceiling: float, cores: int) -> str:
    plain, pool16 = value(section, PLAIN, "calls/s"), value(section, POOL16, "calls/s")
    server_cpu = value(section, POOL16, "server CPU %")
    twelve = 12 * plain
    text = (
        f"- **Pool of 16 against one channel, {condition(section)}.** Twelve times one"
        f" channel ({plain:,.1f} calls/s) would be {twelve:,.0f} calls/s. With no stream cap"
        f" at all, the same 20 ms calls reached {ceiling:,.0f} calls/s in this run"
    )
    if twelve > ceiling:
        text += (
            f", so the target asks for {twelve / ceiling:.1f} times what this machine did"
            " with no cap."
        )
    else:
        text += ", so that ceiling does not explain this miss."
    if pool16 <= ceiling:
        text += f" The pool of 16 did {pool16:,.1f} calls/s ({pool16 / ceiling:.0%} of it),"
    else:
        text += (
            f" The pool of 16 did {pool16:,.1f} calls/s, more than that, so in this run the"
            " no-cap figure was no ceiling;"
        )
    text += (
        f" the server process used {server_cpu:.0f}% CPU (100% is one of {cores} cores)."
        f" The other way to pass, within 5% of the client CPU limit ({cpu_limit:,.0f} calls/s,"
        f" measured with calls that do not sleep), was missed too: {pool16 / cpu_limit:.1%}."
    )
    return text


def _pool4_vs_a105_note(section: Section, others: list[Section]) -> str:
    missed = ratio(section, POOL4_VS_A105)
    pool, a105 = value(section, POOL4, "calls/s"), value(section, A105_4, "calls/s")
    refused = "refused (UNAVAILABLE)"
    refused_pool, refused_a105 = value(section, POOL4, refused), value(section, A105_4, refused)
    parts = [
        f"- **Pool of 4 against A105 N=4, {condition(section)}.** The pool did"
        f" {pool:,.1f} calls/s and A105 N=4 {a105:,.1f}: {missed.value:.2f}, against a"
        f" target of {missed.target}."
    ]
    if refused_pool or refused_a105:
        parts.append(
            "In this table the server refused streams (UNAVAILABLE, summed over the rounds):"
            f" pool of 4 {refused_pool:,.0f}, A105 N=4 {refused_a105:,.0f}."
        )
    else:
        parts.append("No call was refused in this table, so refusals do not explain the gap.")
    parts.append(
        "What differs between the two: A105 sends each call to the oldest of its connections"
        " with a free stream (gRFC A105), while the pool hands its channels out round-robin"
        " whatever each one carries. CPU in this table: client"
        f" {value(section, POOL4, 'client CPU %'):.0f}% (pool) and"
        f" {value(section, A105_4, 'client CPU %'):.0f}% (A105), server"
        f" {value(section, POOL4, 'server CPU %'):.0f}% and"
        f" {value(section, A105_4, 'server CPU %'):.0f}%."
    )
    for other in others:
        theirs = ratio(other, POOL4_VS_A105)
        if is_level(theirs.value):
            verdict = f"level within {LEVEL:.0%}"
        else:
            verdict = "the pool ahead" if theirs.value > 1 else "A105 ahead"
        if not theirs.passed:
            verdict += ", and short of the target as well"
        parts.append(f"With {condition(other)}, the same ratio was {theirs.value:.2f} ({verdict}).")
    return " ".join(parts)


def _startup_note(section: Section) -> str:
    pool_column, plain_column = section.columns[1], section.columns[4]
    one, size = section.rows[0][0], section.rows[-1][0]
    pool_one, pool_many = value(section, one, pool_column), value(section, size, pool_column)
    plain_one, plain_many = value(section, one, plain_column), value(section, size, plain_column)
    pool_growth, plain_growth = pool_many / pool_one, plain_many / plain_one
    extra = (pool_many - plain_many) / number(size)
    text = (
        f"- **Start-up of {size} channels against {one}.** The pool took {pool_growth:.1f}"
        f" times as long; plain grpc.aio channels, opened all at once, took"
        f" {plain_growth:.1f} times as long ({plain_many:,.1f} ms against {plain_one:,.2f} ms)."
    )
    if plain_growth >= (1 - LEVEL) * pool_growth:
        text += " The time goes into opening the connections, plain or pooled."
    text += (
        f" The pool of {size} took {pool_many:,.1f} ms, {abs(extra):.2f} ms per channel"
        f" {'more' if extra >= 0 else 'less'} than the plain channels. Start-up across a real"
        " network, where connects wait on round trips, was not measured."
    )
    return text


SICK = "Fleet (b)"
ROLLING = "Fleet (c)"
FLEET_POOL = "conngrpc pool of 6"
FLEET_RR = "grpc round_robin + health"


def errors_of(section: Section, row: str) -> dict[str, int]:
    """The errors cell ("UNAVAILABLE 290, NotConnectedError 3" or "0") as counts."""
    text = cell(section, row, "errors")
    if text == "0":
        return {}
    pairs = (part.rsplit(" ", 1) for part in text.split(", "))
    return {kind: int(number(count)) for kind, count in pairs}


def _rolling_note(section: Section) -> str:
    kills = int(section.title.split(" kills per client")[0].rsplit(" ", 1)[1])
    ours, theirs = errors_of(section, FLEET_POOL), errors_of(section, FLEET_RR)
    kinds = sorted(set(ours) | set(theirs))
    what = (
        "Every failed call in this table is UNAVAILABLE: a call in flight on a replica"
        " when it was killed, which no client can save (grpc does not retry a call the"
        " server may have begun)."
        if kinds == ["UNAVAILABLE"]
        else f"The failed calls were: {', '.join(kinds)}."
    )
    return (
        f"- **{section.title}: failed calls.** {what} Over {kills} kills the pool lost"
        f" {sum(ours.values()):,} ({sum(ours.values()) / kills:.0f} a kill) and round_robin"
        f" {sum(theirs.values()):,} ({sum(theirs.values()) / kills:.0f} a kill). How many"
        " calls a kill catches in flight depends on the instant it lands, which this run"
        " does not control; compare the per-kill figures of several runs before reading"
        " a difference into them."
    )


def _flips(section: Section) -> tuple[float, int]:
    """How long the replica was NOT_SERVING each time, and how many times, from the title
    ("... turns NOT_SERVING for 3 s, 2 time(s) per client")."""
    after = section.title.split("NOT_SERVING for ", 1)[1]
    seconds, rest = after.split(" s, ", 1)
    return number(seconds), int(rest.split(" ", 1)[0])


def _milliseconds(text: str) -> float | None:
    """``"12 ms"`` as 12.0; ``"none"`` as None."""
    return None if text == "none" else number(text.removesuffix(" ms"))


def _not_serving_note(section: Section) -> str:
    seconds, times = _flips(section)
    ours, theirs = value(section, FLEET_POOL, RECEIVED), value(section, FLEET_RR, RECEIVED)
    ours_last = _milliseconds(cell(section, FLEET_POOL, LAST_ANSWER))
    theirs_last = cell(section, FLEET_RR, LAST_ANSWER)
    parts = [
        f"- **{section.title}: calls the NOT_SERVING replica received.** It was NOT_SERVING"
        f" {times} time(s), {seconds:g} s each; meanwhile it received {ours:,.0f} call(s) from"
        f" the pool (counted by the server; target 0) and {theirs:,.0f} from round_robin +"
        " health."
    ]
    if theirs == 0:
        parts.append("round_robin kept every call off it, so the pool trails it here.")
    elif ours <= theirs:
        parts.append("The pool sent it no more than round_robin did.")
    else:
        parts.append(f"The pool sent it {ours / theirs:.1f} times what round_robin did.")
    if ours_last is None:
        parts.append("No answer from it reached the pool after a flip.")
    else:
        parts.append(
            f"The pool's last answer from it came {ours_last:,.0f} ms after a flip"
            f" (round_robin's: {theirs_last})."
        )
        if ours_last <= seconds * 1000 / 10:
            parts.append(
                f"So every answer from it came in the first {ours_last:,.0f} ms of the"
                f" {seconds:g} s: the replica counts a call as received while NOT_SERVING"
                " from the moment it flips, and calls sent before its health watch told the"
                " pool still arrive."
            )
        else:
            parts.append(
                f"That is more than a tenth of the {seconds:g} s it was NOT_SERVING: the"
                " pool went on sending it calls well after the flip."
            )
    return " ".join(parts)


def why_missed(sections: list[Section], cpu_limit: float, ceiling: float, cores: int) -> str:
    """A paragraph per missed target, each worked out from its own table only."""
    notes = []
    explained: set[tuple[str, str]] = set()  # (section title, ratio name)
    capped = [s for s in sections if s.title.startswith(CAPPED)]
    for section in capped:
        if not ratio(section, POOL16_VS_ONE).passed:
            notes.append(_pool16_note(section, cpu_limit, ceiling, cores))
            explained.add((section.title, POOL16_VS_ONE))
    for section in capped:
        if not ratio(section, POOL4_VS_A105).passed:
            others = [s for s in capped if s is not section]
            notes.append(_pool4_vs_a105_note(section, others))
            explained.add((section.title, POOL4_VS_A105))
    for section in sections:
        if section.title.startswith(SICK) and not ratio(section, RECEIVED_TARGET).passed:
            notes.append(_not_serving_note(section))
            explained.add((section.title, RECEIVED_TARGET))
    for section in sections:
        rolling_ratio = "failed calls, pool / round_robin"
        if section.title.startswith(ROLLING) and not ratio(section, rolling_ratio).passed:
            notes.append(_rolling_note(section))
            explained.add((section.title, rolling_ratio))
    for section in sections:
        title = section.title
        if title.startswith(SLOW) and not all(r.passed for r in section.ratios):
            notes.append(_slow_replica_note(section))
            explained.update((title, r.name) for r in section.ratios)
        stream_cap = [POOLED_CAP_VS_A105, POOLED_P99_VS_A105]
        if title.startswith(STREAM_CAP) and not all(ratio(section, n).passed for n in stream_cap):
            others = [s for s in sections if s.title.startswith(STREAM_CAP) and s is not section]
            notes.append(_pooled_cap_note(section, others, cores))
            explained.update((title, name) for name in stream_cap)
        if title.startswith(MIXED) and not all(r.passed for r in section.ratios):
            notes.append(_mixed_note(section))
            explained.update((title, r.name) for r in section.ratios)
    for section in sections:
        if section.title.startswith("Start-up") and not all(r.passed for r in section.ratios):
            notes.append(_startup_note(section))
            explained.update((section.title, r.name) for r in section.ratios)
    for section in sections:
        for missed in section.ratios:
            if not missed.passed and (section.title, missed.name) not in explained:
                notes.append(
                    f"- **{section.title}: {missed.name}.** {missed.value:.2f} against a"
                    f" target of {missed.target}; nothing in this run explains it."
                )
    if not notes:
        return ""
    return "## Targets missed, and why\n\n" + "\n".join(notes) + "\n"


def compare(ours: float, theirs: float, we: str, they: str) -> str:
    """'level with' or 'ahead of' for two throughputs, with the ratio when not level."""
    share = ours / theirs
    if is_level(share):
        return f"{we} was level with {they} (within {LEVEL:.0%})"
    ahead, behind = (we, they) if share > 1 else (they, we)
    return f"{ahead} did {max(share, 1 / share):.2f} times what {behind} did"


def advice(sections: list[Section], cores: int) -> str:
    """'When to use what', drawn from the stream-capped table with overload protection off."""
    capped = find(sections, f"{CAPPED}, overload protection off")
    loopback = find(sections, "Cold burst: 200 concurrent calls the moment the client is ready, l")
    remote = find(sections, "Cold burst: 200 concurrent calls the moment the client is ready, o")
    recovery = find(sections, "Failure detection")
    over = find(sections, "Overhead")
    cap = find(sections, "gRFC A105's connection cap")
    rate = {row[0]: number(row[1]) for row in capped.rows}
    sockets = {row[0]: row[capped.columns.index("sockets")] for row in capped.rows}
    p50 = ratio(over, "pool p50 / plain p50")
    calls = ratio(over, "plain calls/s / pool calls/s")

    plain = [
        "- **One plain channel** is enough while your concurrency per backend stays under the"
        " server's stream cap (HTTP/2 MAX_CONCURRENT_STREAMS, a server or proxy setting;"
        f" `grpc.max_concurrent_streams` on a grpc server). Here it did {rate[PLAIN]:,.1f}"
        " calls/s."
    ]
    overhead = (
        f"pool p50 / plain p50 {p50.value:.2f}, plain calls/s / pool calls/s {calls.value:.2f}"
    )
    if p50.passed and calls.passed:
        plain.append(
            f"A pool of one cost at most 5% on top of it ({overhead}; below 1 the pool was"
            " the faster)."
        )
    else:
        plain.append(f"A pool of one cost more than 5% on top of it here ({overhead}).")
    plain.append(
        "Several channels made naively with identical arguments"
        + (" do not help: they" if sockets[NAIVE] == "1" else "")
        + f" held {sockets[NAIVE]} socket(s) and did {rate[NAIVE]:,.1f} calls/s."
    )

    default = next(row for row in cap.rows if row[1].startswith("unset"))
    raised = "; ".join(
        f"N={row[0]} with it at {row[1]}: {row[3]} connections"
        for row in cap.rows
        if row is not default
    )
    burst = {
        where: (value(s, s.rows[1][0], "p99 ms"), value(s, s.rows[0][0], "p99 ms"))
        for where, s in (("loopback", loopback), ("link", remote))
    }
    a105 = [
        "- **grpc's own connection scaling (gRFC A105)**, one service-config switch: N=4 did"
        f" {rate[A105_4]:,.1f} calls/s on {sockets[A105_4]} sockets and the pool of 4"
        f" {rate[POOL4]:,.1f} ({compare(rate[POOL4], rate[A105_4], 'the pool', 'A105')});"
        f" N=16 did {rate[A105_16]:,.1f} calls/s on {sockets[A105_16]} sockets and the pool of"
        f" 16 {rate[POOL16]:,.1f} ({compare(rate[POOL16], rate[A105_16], 'the pool', 'A105')}).",
        f"grpc clamps N to {DEFAULT_CAP} unless told otherwise (N={default[0]}, clamp unset:"
        f" {default[3]} connections in the connection-cap table), and the channel argument"
        f" `{CAP_ARGUMENT}` changes the clamp ({raised}).",
        f"A burst of 200 calls on a fresh A105 channel saw p99 {burst['loopback'][0]:,.1f} ms on"
        f" loopback (pool: {burst['loopback'][1]:,.1f} ms) and {burst['link'][0]:,.1f} ms over"
        f" a link with 10 ms each way (pool: {burst['link'][1]:,.1f} ms); A105 opens its extra"
        " connections while calls wait for them; the pool's were open before the burst"
        " (it came after `wait_connected`).",
    ]
    if rate[A105_4] >= (1 - LEVEL) * rate[POOL4]:
        a105.append(
            "If the stream cap is your only problem, the switch did as well as a pool of 4 here."
        )

    detected, recovered = (cell(recovery, "median", c) for c in recovery.columns[1:3])
    pool = [
        "- **A conngrpc pool** adds: after `wait_connected`, every connection"
        " is open and READY before the first call (READY: the TCP and HTTP/2 handshakes are"
        " done; no call is made to check); a hand-out that skips dead connections and fails"
        f" fast (server killed under load: `NotConnectedError` a median {detected} ms later);"
        f" its own reconnection (whole again a median {recovered} ms after the server was back,"
        " with the default 1 s backoff; a connection rotated by the server is reopened without"
        " backoff, which `test_a_connection_rotated_by_the_server_is_reopened_at_once`"
        " checks); supervision of crashing callbacks; callbacks and telemetry per connection."
        " Choose it when a backend's failure must be visible at once or when you need those"
        " hooks."
    ]
    return (
        "\n".join(
            [
                "## When to use what",
                "",
                "Drawn from the figures above (the stream-capped table with overload"
                " protection off: a cap of 10 streams per connection, 20 ms calls, 200 callers,"
                f" {cores} cores).",
                "",
                " ".join(plain),
                " ".join(a105),
                " ".join(pool),
                *fleet_advice(sections),
            ]
        )
        + "\n"
    )


def fleet_advice(sections: list[Section]) -> list[str]:
    """The replicas and the PooledChannel, each figure read from its own table (when run)."""
    titles = {s.title.split(":")[0]: s for s in sections}
    needed = ("Fleet (b)", "Fleet (c)", "Fleet (d)", "Slow replica")
    if not all(t in titles for t in needed):
        return []
    sick, rolling, scale = (titles[t] for t in needed[:3])
    slow = titles["Slow replica"]
    received = {c: cell(sick, c, RECEIVED) for c in (FLEET_POOL, FLEET_RR)}
    kills = int(rolling.title.split(" kills per client")[0].rsplit(" ", 1)[1])
    lost = {c: sum(errors_of(rolling, c).values()) for c in (FLEET_POOL, FLEET_RR)}
    not_connected = errors_of(rolling, FLEET_POOL).get("NotConnectedError", 0)
    reached = {c: cell(scale, c, scale.columns[-1]) for c in (FLEET_POOL, FLEET_RR)}
    pooled = "PooledChannel, pool of 6"
    rate = {c: value(slow, c, "calls/s") for c in (pooled, "grpc round_robin")}
    share = cell(slow, pooled, "slow replica's share")
    return [
        "- **Several replicas.** grpc's one service-config line (`round_robin` +"
        " `healthCheckConfig`) spreads calls and skips a NOT_SERVING replica as the pool"
        f" does: calls a replica received while NOT_SERVING, pool {received[FLEET_POOL]},"
        f" round_robin {received[FLEET_RR]}. Over {kills} rolling kills the pool lost"
        f" {lost[FLEET_POOL]:,} calls ({not_connected:,} of them `NotConnectedError`) and"
        f" round_robin {lost[FLEET_RR]:,}. A replica added to the resolver took 30% of the"
        f" pool's calls after {reached[FLEET_POOL]}; round_robin's: {reached[FLEET_RR]} (its"
        " `ipv4:` target is static, and grpc moves no connection to a replica added later).",
        "- **Where calls land.** With one replica slow (200 ms against 20 ms), the"
        f" PooledChannel did {rate[pooled]:,.1f} calls/s against grpc round_robin's"
        f" {rate['grpc round_robin']:,.1f} ({rate[pooled] / rate['grpc round_robin']:.2f}"
        f" times), sending the slow replica {share} of its calls: use `Pool.channel()` for"
        " calls, `get_channel` when you need a channel itself.",
    ]


def _errors_text(section: Section, row: str) -> str:
    """The errors cell of ``row`` as it is, or "none"."""
    text = cell(section, row, "errors")
    return "none" if text == "0" else text


def _after(text: str, start: str) -> float:
    """The number that follows ``start`` in ``text`` ("capped at 10 streams": 10.0)."""
    return number(text.split(start, 1)[1].split(" ", 1)[0])


def _slow_replica_note(section: Section) -> str:
    pooled, rr, rr_pool = section.rows[0][0], section.rows[1][0], section.rows[2][0]
    share = "slow replica's share"
    ratios = ", ".join(
        f"{r.name} {r.value:.2f} ({'met' if r.passed else 'missed'}; target {r.target})"
        for r in section.ratios
    )
    fast = _after(section.title, "three replicas at ")
    p50 = value(section, pooled, "p50 ms")
    rates = ", ".join(
        f"{row} {value(section, row, 'calls/s'):,.1f}" for row in (pooled, rr, rr_pool)
    )
    shares = ", ".join(cell(section, row, share) for row in (pooled, rr, rr_pool))
    return (
        f"- **{section.title}.** {ratios}. Calls/s: {rates}; the slow replica's share, in"
        f" the same order: {shares}. Through the {pooled}, p50 was {p50:,.1f} ms, against the"
        f" {fast:g} ms its fast replicas add to a call: the {p50 - fast:,.1f} ms more are the"
        " client's and the replicas' own time at this load, which caps what keeping calls"
        " off the slow replica can win. Errors: "
        f"{_errors_text(section, pooled)} ({pooled}), {_errors_text(section, rr)} ({rr})."
    )


def _pooled_cap_note(section: Section, others: list[Section], cores: int) -> str:
    """The capped PooledChannel against A105 N=4 on one stream-capped server."""
    streams = _after(section.title, "capped at ")
    call_ms = number(section.title.split(" ms calls", 1)[0].rsplit(" ", 1)[1])
    size = int(_after(CAPPED_POOL, "pool of "))
    ceiling = size * streams / (call_ms / 1000)
    rate = {row[0]: value(section, row[0], "calls/s") for row in section.rows}
    p99 = {row[0]: value(section, row[0], "p99 ms") for row in section.rows}
    ours, theirs = ratio(section, POOLED_CAP_VS_A105), ratio(section, POOLED_P99_VS_A105)
    parts = [
        f"- **{section.title}: the capped PooledChannel against {A105}.** Calls/s"
        f" {ours.value:.2f} of A105's ({rate[CAPPED_POOL]:,.1f} against {rate[A105]:,.1f};"
        f" target {ours.target}), p99 {theirs.value:.2f} of A105's ({p99[CAPPED_POOL]:,.1f} ms"
        f" against {p99[A105]:,.1f} ms; target {theirs.target}).",
        f"{size} connections of {streams:g} streams each carry at most"
        f" {size * streams:g} calls at once, so {call_ms:g} ms calls top out at"
        f" {ceiling:,.0f} calls/s: A105 reached {rate[A105] / ceiling:.0%} of that and the"
        f" capped PooledChannel {rate[CAPPED_POOL] / ceiling:.0%}.",
    ]
    if is_level(ours.value):
        parts.append(
            f"Their calls/s are level within {LEVEL:.0%}: both queue the calls beyond the cap"
            " and start each on the first connection with a free stream, A105 in grpc's C"
            " core, the PooledChannel in Python (the call that ends starts the next one"
            " waiting, in its done callback)."
        )
    parts.append(_cpu_sentence(section, ceiling, cores))
    ours_errors, theirs_errors = errors_of(section, CAPPED_POOL), errors_of(section, A105)
    if ours_errors or theirs_errors:
        parts.append(
            f"Failed calls: {_errors_text(section, CAPPED_POOL)} (capped PooledChannel),"
            f" {_errors_text(section, A105)} ({A105}). A refused call ends at once, outside the"
            " percentiles, and its caller calls again at once: the more refusals, the fewer"
            " of a client's waits its percentiles count."
        )
    else:
        parts.append("No call failed in this table, so refusals do not explain the gap.")
    parts.append(
        f"The {PLAIN_POOL} (no cap of its own) did {rate[PLAIN_POOL]:,.1f} calls/s, p99"
        f" {p99[PLAIN_POOL]:,.1f} ms, errors {_errors_text(section, PLAIN_POOL)}."
    )
    for other in others:
        parts.append(
            f"With {other.title.rsplit('callers, ', 1)[1]}, the same ratios were"
            f" {ratio(other, POOLED_CAP_VS_A105).value:.2f} (calls/s) and"
            f" {ratio(other, POOLED_P99_VS_A105).value:.2f} (p99)."
        )
    return " ".join(parts)


#: A server process this busy (% of one core) in every row set the rates, not the cap.
BUSY_SERVER = 80.0


def _cpu_sentence(section: Section, ceiling: float, cores: int) -> str:
    client, server = CPU_COLUMNS
    ours_client, theirs_client = value(section, CAPPED_POOL, client), value(section, A105, client)
    text = (
        f"CPU (100% is one core of {cores}): client {ours_client:.0f} (capped PooledChannel)"
        f" and {theirs_client:.0f} (A105), server {value(section, CAPPED_POOL, server):.0f}"
        f" and {value(section, A105, server):.0f}."
    )
    busiest = min(value(section, row[0], server) for row in section.rows)
    if busiest >= BUSY_SERVER:
        text += (
            f" The server process (one Python event loop) was at {busiest:.0f}% or more in"
            f" every row, and no client came near {ceiling:,.0f} calls/s: the server's CPU,"
            " not the stream cap, set these rates."
        )
        if ours_client > theirs_client:
            text += (
                f" Client and server share the {cores} cores, so the"
                f" {ours_client - theirs_client:.0f} points of client CPU the capped"
                " PooledChannel spends beyond A105 (its queue runs in Python, A105's in"
                " grpc's C core) are CPU the server did not get."
            )
    return text


def _mixed_note(section: Section) -> str:
    """The short calls' p99 through the capped PooledChannel against the others'."""
    p50, p99 = "short calls' p50 ms", "short calls' p99 ms"
    missed = [r for r in section.ratios if not r.passed]
    figures = "; ".join(
        f"{row}: p50 {value(section, row, p50):,.1f} ms, p99 {value(section, row, p99):,.1f} ms,"
        f" errors {_errors_text(section, row)}"
        for row in [r[0] for r in section.rows]
    )
    names = ", ".join(f"{r.name} {r.value:.2f} (target {r.target})" for r in missed)
    return (
        f"- **{section.title}.** Missed: {names}. The short calls, client by client:"
        f" {figures}. With max_calls_per_channel the PooledChannel queues the calls beyond"
        " the cap in one line, first come first served, as A105 does: a short call waits"
        " behind whatever came before it, long calls included, so the least-loaded pick has"
        " no free choice to make while the line is not empty."
    )
