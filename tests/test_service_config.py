"""A pool reads grpc's service config as grpc does: its pick, A50's ejection, its health,
A6's retries, hedging and throttling, and the timeouts and waitForReady of its methods.

The parser's reading is checked against grpc's own: each good document is given to a
real grpc.aio channel as ``grpc.service_config`` and a call goes through; each bad one
that grpc also refuses fails grpc's calls too; where the two differ, a test says so.
"""

from __future__ import annotations

import json
import math
import re
import types
from typing import Any

import grpc
import grpc.aio
import pytest

from bench.outliers import CONFIG as OUTLIERS_CONFIG
from conngrpc import ChannelConfig, Pool
from conngrpc._server import PEER_METHOD, SLEEP_METHOD
from conngrpc.channel.connector import raw_unary
from conngrpc.pool.ejection import rules_from
from conngrpc.pool.runtime import pools
from conngrpc.pool.service_config import (
    POOL_FIELDS,
    FailurePercentageEjection,
    HedgingPolicy,
    MethodPolicy,
    OutlierDetection,
    PoolServiceConfig,
    RetryPolicy,
    RetryThrottling,
    SuccessRateEjection,
    parse_service_config,
)
from conngrpc.pool.settings import ResolvedSettings
from conngrpc.testing import FakeConnector
from tests._pools import fake_channel, running_pool

WHERE = "Pool service_config"
ROUND_ROBIN = [{"round_robin": {}}]

# gRFC A50's example, field by field: grpc's defaults written out.
A50_EXAMPLE = {
    "loadBalancingConfig": [
        {
            "outlier_detection_experimental": {
                "interval": "10s",
                "baseEjectionTime": "30s",
                "maxEjectionTime": "300s",
                "maxEjectionPercent": 10,
                "successRateEjection": {
                    "stdevFactor": 1900,
                    "enforcementPercentage": 100,
                    "minimumHosts": 5,
                    "requestVolume": 100,
                },
                "failurePercentageEjection": {
                    "threshold": 85,
                    "enforcementPercentage": 100,
                    "minimumHosts": 5,
                    "requestVolume": 50,
                },
                "childPolicy": ROUND_ROBIN,
            }
        }
    ]
}

# The JSON issue 16's benchmarks give grpc and the pool alike (bench/outliers.py).
BENCHMARK = OUTLIERS_CONFIG

METHOD_CONFIG = [{"name": [{"service": "conngrpc.demo.v1.Demo"}], "timeout": "30s"}]


def _outlier(**fields: Any) -> dict[str, Any]:
    """A document whose one policy is outlier_detection_experimental over round_robin."""
    return {
        "loadBalancingConfig": [
            {"outlier_detection_experimental": {"childPolicy": ROUND_ROBIN, **fields}}
        ]
    }


def _lb(*entries: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": list(entries)}


OD = "loadBalancingConfig[0].outlier_detection_experimental"

DEMO = "conngrpc.demo.v1.Demo"
SLEEP = {"service": DEMO, "method": "Sleep"}
# gRFC A6's examples of a retryPolicy, a hedgingPolicy and retryThrottling, in entries
# named in grpc's three forms (a method, a whole service, the default).
A6_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
A6_HEDGING = {
    "maxAttempts": 4,
    "hedgingDelay": "0.5s",
    "nonFatalStatusCodes": ["UNAVAILABLE", "INTERNAL", "ABORTED"],
}
A6_EXAMPLE = {
    "methodConfig": [
        {"name": [SLEEP], "retryPolicy": A6_RETRY},
        {"name": [{"service": DEMO}], "hedgingPolicy": A6_HEDGING},
        {"name": [{}], "waitForReady": True, "timeout": "30s"},
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
A6_RETRY_POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff=0.1,
    max_backoff=1.0,
    backoff_multiplier=2.0,
    retryable_status_codes=frozenset({grpc.StatusCode.UNAVAILABLE}),
)
NOT_OK = [code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


def _methods(*entries: Any) -> dict[str, Any]:
    return {"methodConfig": list(entries)}


def _retry(**fields: Any) -> dict[str, Any]:
    """A document whose default entry has A6's example retryPolicy, ``fields`` changed."""
    return _methods({"name": [{}], "retryPolicy": {**A6_RETRY, **fields}})


def _hedging(**fields: Any) -> dict[str, Any]:
    return _methods({"name": [{}], "hedgingPolicy": {"maxAttempts": 3, **fields}})


def _throttling(**fields: Any) -> dict[str, Any]:
    return {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1, **fields}}


RP = "methodConfig[0].retryPolicy"
HP = "methodConfig[0].hedgingPolicy"

# Documents the pool reads and grpcio accepts too (grpcio has no least_request).
GOOD = [
    pytest.param({}, id="empty"),
    pytest.param(A50_EXAMPLE, id="a50-example"),
    pytest.param(BENCHMARK, id="benchmark"),
    pytest.param({**_lb({"round_robin": {}}), "methodConfig": METHOD_CONFIG}, id="rr-method"),
    pytest.param(_lb({"bogus": {}}, {"round_robin": {"unknown": 1}}), id="skips-unknown"),
    pytest.param(_outlier(unknownField=1, successRateEjection={}), id="unknown-field"),
    pytest.param(_outlier(interval=None, maxEjectionPercent="50"), id="null-and-string"),
    pytest.param(_outlier(baseEjectionTime="0s", maxEjectionTime="0.000000001s"), id="zero"),
    pytest.param({"loadBalancingPolicy": "ROUND_ROBIN"}, id="legacy-upper-case"),
    pytest.param(
        {"healthCheckConfig": {"serviceName": ""}, **_lb({"round_robin": {}})}, id="health"
    ),
    pytest.param(
        {"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}, "methodConfig": METHOD_CONFIG},
        id="passthrough-only",
    ),
    pytest.param(A6_EXAMPLE, id="a6-example"),
    pytest.param(
        _retry(maxAttempts="7", backoffMultiplier="1.5", retryableStatusCodes=NOT_OK),
        id="retry-clamped-strings-every-code",
    ),
    pytest.param(
        _retry(initialBackoff="0.001s", maxBackoff="0.0015s", backoffMultiplier=1e-40),
        id="retry-smallest",
    ),
    pytest.param(
        _retry(
            maxAttempts=2147483647,
            maxBackoff="315576000000.999999999s",
            backoffMultiplier=" 1e1 ",
            retryableStatusCodes=["UNAVAILABLE", "UNAVAILABLE"],
        ),
        id="retry-largest",
    ),
    pytest.param(_hedging(maxAttempts=9, hedgingDelay="0s", nonFatalStatusCodes=[]), id="hedging"),
    pytest.param(
        _methods(
            {"name": [{}], "timeout": "0s", "waitForReady": False},
            {"name": [{"service": DEMO}], "timeout": "0.0005s"},
        ),
        id="timeouts-of-none",
    ),
    pytest.param(
        _methods(
            {
                "name": [{"service": DEMO}, SLEEP, {"service": "b.B", "method": ""}],
                "timeout": "30s",
            },
            {"name": [{"service": "", "method": "Other"}], "waitForReady": True},
        ),
        id="names",
    ),
    pytest.param(
        _methods(
            {"timeout": "30s"},
            {"name": [], "retryPolicy": A6_RETRY},
            {"name": None, "waitForReady": True},
            {
                "name": [{"service": None, "method": None}, {"service": DEMO, "unknown": 1}],
                "retryPolicy": None,
                "hedgingPolicy": None,
                "timeout": None,
                "waitForReady": None,
                "maxRequestMessageBytes": 1000,
            },
        ),
        id="unnamed-and-nulls",
    ),
    pytest.param(
        _methods(
            {"name": [{}], "timeout": "30s", "maxRequestMessageBytes": 1000},
            {"name": [{"service": DEMO}], "retryPolicy": A6_RETRY},
        ),
        id="hiding",
    ),
    pytest.param({"methodConfig": [], "retryThrottling": None}, id="empty-and-null"),
    pytest.param(
        _throttling(maxTokens="4294967295", tokenRatio="4294967.2956"), id="throttling-largest"
    ),
    pytest.param(_throttling(maxTokens=1, tokenRatio=" +0.0019"), id="throttling-smallest"),
]


# --- what a document gives -------------------------------------------------------


def test_grpcs_a50_example_reads_as_grpcs_defaults() -> None:
    expected = OutlierDetection(
        interval=10.0,
        base_ejection_time=30.0,
        max_ejection_time=300.0,
        max_ejection_percent=10,
        success_rate_ejection=SuccessRateEjection(
            stdev_factor=1900, enforcement_percentage=100, minimum_hosts=5, request_volume=100
        ),
        failure_percentage_ejection=FailurePercentageEjection(
            threshold=85, enforcement_percentage=100, minimum_hosts=5, request_volume=50
        ),
    )
    assert parse_service_config(A50_EXAMPLE) == PoolServiceConfig(
        pick="round_robin", outlier_detection=expected
    )
    # A50's example is grpc's defaults, and so the dataclasses' defaults.
    assert expected == OutlierDetection(
        success_rate_ejection=SuccessRateEjection(),
        failure_percentage_ejection=FailurePercentageEjection(),
    )


def test_the_issues_benchmark_config() -> None:
    assert parse_service_config(BENCHMARK) == PoolServiceConfig(
        pick="round_robin",
        outlier_detection=OutlierDetection(
            interval=1.0,
            base_ejection_time=5.0,
            max_ejection_time=300.0,
            max_ejection_percent=50,
            failure_percentage_ejection=FailurePercentageEjection(
                threshold=25, enforcement_percentage=100, minimum_hosts=3, request_volume=20
            ),
        ),
    )


def test_absent_fields_take_grpcs_defaults_and_no_rule_is_set() -> None:
    parsed = parse_service_config(_outlier())
    assert parsed.outlier_detection == OutlierDetection()
    assert parsed.outlier_detection.success_rate_ejection is None
    assert parsed.outlier_detection.failure_percentage_ejection is None


def test_an_empty_rule_object_is_the_rule_with_grpcs_defaults() -> None:
    parsed = parse_service_config(_outlier(successRateEjection={}, failurePercentageEjection={}))
    assert parsed.outlier_detection == OutlierDetection(
        success_rate_ejection=SuccessRateEjection(),
        failure_percentage_ejection=FailurePercentageEjection(),
    )


def test_a_null_field_reads_as_an_absent_one_as_in_grpc() -> None:
    document = _outlier(interval=None, maxEjectionPercent=None, successRateEjection=None)
    assert parse_service_config(document).outlier_detection == OutlierDetection()
    assert parse_service_config({"healthCheckConfig": None}) == PoolServiceConfig()
    assert parse_service_config({"loadBalancingPolicy": None}) == PoolServiceConfig()


def test_integers_written_as_strings_are_read_as_grpc_reads_them() -> None:
    rule = {"threshold": "25", "requestVolume": " 20 ", "minimumHosts": "+3"}
    parsed = parse_service_config(_outlier(failurePercentageEjection=rule))
    assert parsed.outlier_detection is not None
    assert parsed.outlier_detection.failure_percentage_ejection == FailurePercentageEjection(
        threshold=25, request_volume=20, minimum_hosts=3
    )


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("10s", 10.0),
        ("0.5s", 0.5),
        ("1.000340012s", 1.000340012),
        ("0.000000001s", 1e-9),
        ("315576000000s", 315576000000.0),
    ],
)
def test_durations_are_protobuf_json_durations(written: str, seconds: float) -> None:
    parsed = parse_service_config(_outlier(interval=written))
    assert parsed.outlier_detection is not None
    assert parsed.outlier_detection.interval == pytest.approx(seconds, rel=1e-12)


def test_no_policy_named_keeps_the_pools_own_pick_and_default_ejection() -> None:
    assert parse_service_config({}) == PoolServiceConfig()
    parsed = parse_service_config({"methodConfig": METHOD_CONFIG})
    assert (parsed.pick, parsed.outlier_detection) == ("least_loaded", None)


def test_entries_the_pool_does_not_support_are_skipped() -> None:
    document = _lb({"pick_first": {}}, {"xds_experimental": {"x": 1}}, {"round_robin": {}})
    assert parse_service_config(document).pick == "round_robin"


def test_entries_after_the_chosen_one_are_not_read_as_in_grpc() -> None:
    document = _lb({"round_robin": {}}, "not an entry", {"least_request_experimental": []})
    assert parse_service_config(document).pick == "round_robin"


def test_least_request_reads_choice_count_as_grpc_does() -> None:
    def picked(config: dict[str, Any]) -> tuple[str, int]:
        parsed = parse_service_config(_lb({"least_request_experimental": config}))
        return parsed.pick, parsed.choice_count

    assert picked({}) == ("least_request", 2)
    assert picked({"choiceCount": 3}) == ("least_request", 3)
    assert picked({"choiceCount": "7"}) == ("least_request", 7)
    assert picked({"choiceCount": 11}) == ("least_request", 10)  # grpc clamps to 10
    assert picked({"choiceCount": 4294967295}) == ("least_request", 10)


def test_the_child_policy_names_the_pick_under_outlier_detection() -> None:
    child = [
        {"pick_first": {}},
        {"outlier_detection_experimental": {"childPolicy": ROUND_ROBIN}},  # not as a child
        {"least_request_experimental": {"choiceCount": 4}},
    ]
    parsed = parse_service_config(
        _lb({"outlier_detection_experimental": {"interval": "2s", "childPolicy": child}})
    )
    assert parsed == PoolServiceConfig(
        pick="least_request", choice_count=4, outlier_detection=OutlierDetection(interval=2.0)
    )


@pytest.mark.parametrize(
    ("legacy", "pick"),
    [
        ("round_robin", "round_robin"),
        ("ROUND_ROBIN", "round_robin"),
        ("Least_Request_Experimental", "least_request"),
        ("", "least_loaded"),  # grpc reads "" as no policy named
    ],
)
def test_the_legacy_policy_name_is_read_in_any_case(legacy: str, pick: str) -> None:
    assert parse_service_config({"loadBalancingPolicy": legacy}).pick == pick


def test_load_balancing_config_wins_over_the_legacy_name() -> None:
    document = {
        "loadBalancingPolicy": "round_robin",
        **_lb({"least_request_experimental": {"choiceCount": 3}}),
    }
    assert parse_service_config(document).pick == "least_request"
    # The legacy name is not read then: one the pool lacks is no error.
    document = {"loadBalancingPolicy": "pick_first", **_lb({"round_robin": {}})}
    assert parse_service_config(document).pick == "round_robin"


@pytest.mark.parametrize(
    ("health", "service"),
    [({"serviceName": "echo.Echo"}, "echo.Echo"), ({"serviceName": ""}, ""), ({}, None)],
)
def test_health_check_config_names_the_health_service(
    health: dict[str, Any], service: str | None
) -> None:
    assert parse_service_config({"healthCheckConfig": health}).health_service == service


def test_what_the_pool_does_not_handle_passes_through_unchanged() -> None:
    sizes = {"maxRequestMessageBytes": 1000, "maxResponseMessageBytes": 2000}
    document = {
        "methodConfig": [{"name": [SLEEP], "timeout": "1s", **sizes, "retryPolicy": A6_RETRY}],
        **A50_EXAMPLE,
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "loadBalancingPolicy": "round_robin",
        "healthCheckConfig": {"serviceName": ""},
        "somethingNew": {"a": [1, 2.5, None, True]},
    }
    parsed = parse_service_config(document)
    assert parsed.channel_service_config is not None
    passed = json.loads(parsed.channel_service_config)
    assert passed == {
        "methodConfig": [{"name": [SLEEP], **sizes}],
        "somethingNew": {"a": [1, 2.5, None, True]},
    }
    assert list(passed) == ["methodConfig", "somethingNew"]  # in order
    assert "retryThrottling" in POOL_FIELDS


def test_nothing_left_for_the_channels_is_none() -> None:
    assert parse_service_config(A50_EXAMPLE).channel_service_config is None
    assert parse_service_config({"healthCheckConfig": {}}).channel_service_config is None
    assert parse_service_config(A6_EXAMPLE).channel_service_config is None
    assert parse_service_config({"methodConfig": []}).channel_service_config is None


# (the methodConfig given, what each channel gets of it: None for no methodConfig at all)
STRIPPED = [
    pytest.param(
        [{"name": [SLEEP], "timeout": "30s", "retryPolicy": A6_RETRY, "maxRequestMessageBytes": 5}],
        [{"name": [SLEEP], "maxRequestMessageBytes": 5}],
        id="other-fields-stay",
    ),
    pytest.param(
        [{"name": [SLEEP], "timeout": "30s", "waitForReady": True, "hedgingPolicy": A6_HEDGING}],
        None,
        id="name-alone-is-dropped",
    ),
    pytest.param(
        [{"timeout": "30s", "maxResponseMessageBytes": 5}, {"waitForReady": True}],
        [{"maxResponseMessageBytes": 5}],
        id="unnamed",
    ),
    pytest.param(
        [
            {"name": [{}], "maxRequestMessageBytes": 5},
            {"name": [{"service": DEMO}], "timeout": "30s"},
        ],
        [{"name": [{}], "maxRequestMessageBytes": 5}, {"name": [{"service": DEMO}]}],
        id="name-alone-stays-where-it-hides-one",
    ),
    pytest.param(
        [
            {"name": [{"service": DEMO}], "maxRequestMessageBytes": 5},
            {"name": [SLEEP, {"service": "b.B"}], "retryPolicy": A6_RETRY},
        ],
        [
            {"name": [{"service": DEMO}], "maxRequestMessageBytes": 5},
            {"name": [SLEEP, {"service": "b.B"}]},
        ],
        id="a-method-hides-its-service",
    ),
    pytest.param(
        [
            {"name": [{"service": DEMO}], "maxRequestMessageBytes": 5},
            {"name": [{}], "timeout": "30s"},
        ],
        [{"name": [{"service": DEMO}], "maxRequestMessageBytes": 5}],
        id="the-default-hides-nothing",
    ),
    pytest.param(
        [{"name": [{}], "timeout": "60s"}, {"name": [{"service": DEMO}], "timeout": "30s"}],
        None,
        id="nothing-left-to-hide",
    ),
]


@pytest.mark.parametrize(("given", "passed"), STRIPPED)
def test_each_channel_gets_method_config_without_what_the_pool_applies(
    given: list[Any], passed: list[Any] | None
) -> None:
    parsed = parse_service_config({"methodConfig": given, "somethingNew": 1})
    assert parsed.channel_service_config is not None
    assert json.loads(parsed.channel_service_config).get("methodConfig") == passed


def test_a6s_example_reads_field_by_field() -> None:
    hedging = HedgingPolicy(
        max_attempts=4,
        hedging_delay=0.5,
        non_fatal_status_codes=frozenset(
            {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED}
        ),
    )
    parsed = parse_service_config(A6_EXAMPLE)
    assert parsed.methods == {
        f"/{DEMO}/Sleep": MethodPolicy(retry=A6_RETRY_POLICY),
        f"/{DEMO}/": MethodPolicy(hedging=hedging),
        "": MethodPolicy(timeout=30.0, wait_for_ready=True),
    }
    assert parsed.retry_throttling == RetryThrottling(max_tokens=10, token_ratio=0.1)
    assert parsed.method_policy(f"/{DEMO}/Sleep") == MethodPolicy(retry=A6_RETRY_POLICY)
    assert parsed.method_policy(f"/{DEMO}/Peer") == MethodPolicy(hedging=hedging)
    assert parsed.method_policy("/b.B/M") == MethodPolicy(timeout=30.0, wait_for_ready=True)
    # The rest of the document is read as before.
    assert (parsed.pick, parsed.outlier_detection, parsed.health_service) == (
        "least_loaded",
        None,
        None,
    )


MOST_SPECIFIC = _methods(
    {"name": [{}], "timeout": "1s"},
    {"name": [{"service": "a.A"}], "waitForReady": True},
    {"name": [{"service": "a.A", "method": "M"}], "maxRequestMessageBytes": 10},
    {"name": [{"service": "b.B", "method": "M"}], "retryPolicy": A6_RETRY},
)


@pytest.mark.parametrize(
    ("method", "policy"),
    [
        # The method's own entry sets nothing the pool applies: grpc applies it whole,
        # not the service's or the default's.
        ("/a.A/M", None),
        ("/a.A/N", MethodPolicy(wait_for_ready=True)),  # the service's, not merged
        ("/b.B/M", MethodPolicy(retry=A6_RETRY_POLICY)),
        ("/b.B/N", MethodPolicy(timeout=1.0)),
        ("/c.C/M", MethodPolicy(timeout=1.0)),
    ],
)
def test_the_most_specific_entry_wins_whole_as_in_grpc(
    method: str, policy: MethodPolicy | None
) -> None:
    assert parse_service_config(MOST_SPECIFIC).method_policy(method) == policy


def test_an_entry_that_sets_nothing_the_pool_applies_is_kept_where_it_hides_one() -> None:
    assert parse_service_config(MOST_SPECIFIC).methods["/a.A/M"] == MethodPolicy()
    hides_nothing = _methods({"name": [{"service": "a.A"}], "maxRequestMessageBytes": 10})
    assert parse_service_config(hides_nothing).methods == {}
    # A timeout of 0 is none, as in grpc, and hides the default's as grpc's does.
    zero = _methods({"name": [{}], "timeout": "1s"}, {"name": [SLEEP], "timeout": "0s"})
    assert parse_service_config(zero).methods[f"/{DEMO}/Sleep"] == MethodPolicy()
    assert parse_service_config(zero).method_policy(f"/{DEMO}/Sleep") is None
    assert parse_service_config(zero).method_policy(f"/{DEMO}/Peer") == MethodPolicy(timeout=1.0)


def test_no_method_config_gives_no_policy() -> None:
    assert PoolServiceConfig().methods == {}
    assert PoolServiceConfig().method_policy("/a.A/M") is None
    assert (
        parse_service_config(_methods({"name": [{"service": "a.A"}]})).method_policy("/b.B/M")
        is None
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ({}, ""),
        ({"service": ""}, ""),
        ({"service": None, "method": None}, ""),
        ({"service": "", "method": ""}, ""),
        ({"service": "", "method": "M"}, ""),  # grpc reads it as the default too
        ({"service": "a.A"}, "/a.A/"),
        ({"service": "a.A", "method": ""}, "/a.A/"),
        ({"service": "a.A", "method": None}, "/a.A/"),
        ({"service": "a.A", "unknown": 1}, "/a.A/"),
        ({"service": "a.A", "method": "M"}, "/a.A/M"),
    ],
)
def test_method_names_read_as_grpcs_method_paths(name: dict[str, Any], key: str) -> None:
    parsed = parse_service_config(_methods({"name": [name], "timeout": "1s"}))
    assert parsed.methods == {key: MethodPolicy(timeout=1.0)}


def test_an_entry_applies_to_each_name_it_gives() -> None:
    names = [{}, {"service": "a.A"}, {"service": "b.B", "method": "M"}]
    parsed = parse_service_config(_methods({"name": names, "waitForReady": False}))
    assert parsed.methods == dict.fromkeys(
        ["", "/a.A/", "/b.B/M"], MethodPolicy(wait_for_ready=False)
    )


@pytest.mark.parametrize("names", [{}, {"name": []}, {"name": None}], ids=["absent", "[]", "null"])
def test_an_entry_without_names_applies_to_no_method_but_is_read(names: dict[str, Any]) -> None:
    assert parse_service_config(_methods({**names, "timeout": "1s"})).methods == {}
    with pytest.raises(ValueError, match=re.escape(f"{RP}.maxAttempts: expected an integer")):
        parse_service_config(_methods({**names, "retryPolicy": {**A6_RETRY, "maxAttempts": 1}}))


@pytest.mark.parametrize("written", [6, "7", " +9 ", 2147483647])
def test_max_attempts_above_5_reads_as_5_as_grpc_clamps_it(written: object) -> None:
    retry = parse_service_config(_retry(maxAttempts=written)).methods[""].retry
    hedging = parse_service_config(_hedging(maxAttempts=written)).methods[""].hedging
    assert (retry and retry.max_attempts, hedging and hedging.max_attempts) == (5, 5)


@pytest.mark.parametrize(
    ("fields", "backoffs"),
    [
        ({"initialBackoff": "0.0015s", "maxBackoff": "1.0009999s"}, (0.001, 1.0)),
        (
            {"initialBackoff": "0.001s", "maxBackoff": "315576000000.999999999s"},
            (0.001, 315576000000.999),
        ),
    ],
)
def test_backoffs_are_read_in_whole_milliseconds_as_grpc_reads_them(
    fields: dict[str, str], backoffs: tuple[float, float]
) -> None:
    retry = parse_service_config(_retry(**fields)).methods[""].retry
    assert retry is not None
    assert (retry.initial_backoff, retry.max_backoff) == pytest.approx(backoffs, rel=1e-15)


@pytest.mark.parametrize(
    ("written", "timeout"),
    [("2.0005s", 2.0), ("0.001s", 0.001), ("0.0009s", None), ("0s", None), ("30s", 30.0)],
)
def test_a_timeout_is_read_in_whole_milliseconds_and_0_is_none(
    written: str, timeout: float | None
) -> None:
    document = _methods({"name": [{}], "timeout": written}, {"name": [SLEEP], "waitForReady": True})
    assert parse_service_config(document).method_policy("/a.A/M") == (
        None if timeout is None else MethodPolicy(timeout=timeout)
    )


def test_the_hedging_delay_is_read_to_the_nanosecond_and_0_when_absent() -> None:
    hedging = parse_service_config(_hedging(hedgingDelay="0.0000005s")).methods[""].hedging
    assert hedging == HedgingPolicy(max_attempts=3, hedging_delay=5e-7)
    assert parse_service_config(_hedging()).methods[""].hedging == HedgingPolicy(max_attempts=3)


@pytest.mark.parametrize(
    ("written", "multiplier"),
    [(2, 2.0), (1.5, 1.5), ("1.5", 1.5), (" 2 ", 2.0), ("1e1", 10.0), ("+.5", 0.5), (1e-40, 1e-40)],
)
def test_the_backoff_multiplier_is_a_number_or_a_string_of_one(
    written: object, multiplier: float
) -> None:
    retry = parse_service_config(_retry(backoffMultiplier=written)).methods[""].retry
    assert retry is not None
    assert retry.backoff_multiplier == multiplier


@pytest.mark.parametrize(
    ("written", "ratio"),
    [
        (0.1, 0.1),
        ("0.5", 0.5),
        (5, 5.0),
        (1.2345678, 1.234),  # the rest cut, not rounded, as grpc does
        ("1.2349", 1.234),
        (" +0.001 ", 0.001),
        ("4294967.295", 4294967.295),
    ],
)
def test_the_token_ratio_is_read_from_its_text_to_3_decimals(written: object, ratio: float) -> None:
    throttling = parse_service_config(_throttling(tokenRatio=written)).retry_throttling
    assert throttling == RetryThrottling(max_tokens=10, token_ratio=ratio)


def test_the_token_ratio_of_a_json_text_is_read_as_written() -> None:
    as_written = parse_service_config('{"retryThrottling": {"maxTokens": 5, "tokenRatio": 1.50}}')
    assert as_written.retry_throttling == RetryThrottling(max_tokens=5, token_ratio=1.5)
    # grpc refuses an exponent here, though Python's json reads the same number as 0.1.
    with pytest.raises(ValueError, match=r"retryThrottling\.tokenRatio: .*, got 1\.0e-1$"):
        parse_service_config('{"retryThrottling": {"maxTokens": 5, "tokenRatio": 1.0e-1}}')


def test_status_codes_are_read_by_their_names() -> None:
    every = parse_service_config(_retry(retryableStatusCodes=NOT_OK)).methods[""].retry
    assert every is not None
    assert every.retryable_status_codes == frozenset(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_a_null_method_field_reads_as_an_absent_one_as_in_grpc() -> None:
    nulls = dict.fromkeys(["retryPolicy", "hedgingPolicy", "timeout", "waitForReady"])
    assert parse_service_config(_methods({"name": [{}], **nulls})).methods == {}
    assert parse_service_config({"retryThrottling": None}).retry_throttling is None


def test_the_methods_mapping_cannot_change() -> None:
    given = {"/a.A/": MethodPolicy(timeout=1.0)}
    config = PoolServiceConfig(methods=given)
    given["/b.B/"] = MethodPolicy(timeout=2.0)
    assert list(config.methods) == ["/a.A/"]
    with pytest.raises(TypeError):
        config.methods["/b.B/"] = MethodPolicy()  # type: ignore[index]


@pytest.mark.parametrize("document", GOOD)
def test_a_json_string_and_a_dict_read_alike(document: dict[str, Any]) -> None:
    assert parse_service_config(json.dumps(document)) == parse_service_config(document)


def test_any_mapping_and_tuples_read_as_json_objects_and_lists() -> None:
    frozen = types.MappingProxyType(
        {"loadBalancingConfig": ({"round_robin": types.MappingProxyType({})},)}
    )
    assert parse_service_config(frozen) == parse_service_config(_lb({"round_robin": {}}))


def test_ejection_time_grows_and_is_capped_at_the_larger_of_base_and_max() -> None:
    rules = rules_from(OutlierDetection(base_ejection_time=30.0, max_ejection_time=300.0))
    assert [rules.ejection_time(n) for n in (1, 2, 10, 11)] == [30.0, 60.0, 300.0, 300.0]
    # A max below the base never shortens an ejection below the base, as in grpc.
    short_max = rules_from(OutlierDetection(base_ejection_time=30.0, max_ejection_time=10.0))
    assert [short_max.ejection_time(n) for n in (1, 3)] == [30.0, 30.0]


# --- bad documents ----------------------------------------------------------------

BAD = [
    # (document, the JSON path the message names ("" for the document), what it says)
    ({"loadBalancingConfig": None}, "loadBalancingConfig", "expected a list of"),
    ({"loadBalancingConfig": {"round_robin": {}}}, "loadBalancingConfig", "expected a list"),
    (
        _lb(),
        "loadBalancingConfig",
        "no policy conngrpc's pool supports (round_robin, least_request_experimental, "
        "outlier_detection_experimental); got []",
    ),
    (
        _lb({"pick_first": {}}, {"xds_experimental": {}}),
        "loadBalancingConfig",
        "no policy conngrpc's pool supports (round_robin, least_request_experimental, "
        "outlier_detection_experimental); got ['pick_first', 'xds_experimental']",
    ),
    (_lb({}), "loadBalancingConfig[0]", "expected an object with exactly one key"),
    (
        _lb({"round_robin": {}, "pick_first": {}}),
        "loadBalancingConfig[0]",
        "expected an object with exactly one key",
    ),
    (
        _lb({"pick_first": {}}, "round_robin"),
        "loadBalancingConfig[1]",
        "expected an object with exactly one key, a policy's name, got 'round_robin'",
    ),
    (_lb({"round_robin": []}), "loadBalancingConfig[0].round_robin", "expected an object"),
    (
        _lb({"bogus": None}, {"round_robin": {}}),
        "loadBalancingConfig[0].bogus",
        "expected an object (the policy's config), got None",
    ),
    (
        _lb({"least_request_experimental": {"choiceCount": 1}}),
        "loadBalancingConfig[0].least_request_experimental.choiceCount",
        "expected an integer 2..4294967295, got 1",
    ),
    (
        _lb({"least_request_experimental": {"choiceCount": 3.0}}),
        "loadBalancingConfig[0].least_request_experimental.choiceCount",
        "expected an integer 2..4294967295, got 3.0",
    ),
    (
        _outlier(failurePercentageEjection={"threshold": 150}),
        f"{OD}.failurePercentageEjection.threshold",
        "expected an integer 0..100, got 150",
    ),
    (
        _outlier(failurePercentageEjection={"enforcementPercentage": 101}),
        f"{OD}.failurePercentageEjection.enforcementPercentage",
        "expected an integer 0..100, got 101",
    ),
    (
        _outlier(successRateEjection={"enforcementPercentage": "200"}),
        f"{OD}.successRateEjection.enforcementPercentage",
        "expected an integer 0..100, got '200'",
    ),
    (
        _outlier(successRateEjection={"stdevFactor": -1}),
        f"{OD}.successRateEjection.stdevFactor",
        "expected an integer 0..4294967295, got -1",
    ),
    (
        _outlier(successRateEjection={"minimumHosts": 4294967296}),
        f"{OD}.successRateEjection.minimumHosts",
        "expected an integer 0..4294967295, got 4294967296",
    ),
    (
        _outlier(successRateEjection={"requestVolume": True}),
        f"{OD}.successRateEjection.requestVolume",
        "got True",
    ),
    (
        _outlier(failurePercentageEjection=[]),
        f"{OD}.failurePercentageEjection",
        "expected an object, got []",
    ),
    (
        _outlier(maxEjectionPercent=101),
        f"{OD}.maxEjectionPercent",
        "expected an integer 0..100, got 101",
    ),
    (_outlier(maxEjectionPercent=50.0), f"{OD}.maxEjectionPercent", "got 50.0"),
    (_outlier(interval="1.5"), f"{OD}.interval", "got '1.5'"),
    (_outlier(interval=10), f"{OD}.interval", 'such as "10s" or "0.5s"'),
    (_outlier(interval="-1s"), f"{OD}.interval", "got '-1s'"),
    (_outlier(interval="-0.5s"), f"{OD}.interval", "got '-0.5s'"),
    (_outlier(interval="0s"), f"{OD}.interval", "expected a duration > 0s"),
    (_outlier(interval="1.0000000001s"), f"{OD}.interval", "got '1.0000000001s'"),
    (_outlier(interval="1.s"), f"{OD}.interval", "got '1.s'"),
    (_outlier(interval=".5s"), f"{OD}.interval", "got '.5s'"),
    (_outlier(interval="1e1s"), f"{OD}.interval", "got '1e1s'"),
    (_outlier(baseEjectionTime="315576000001s"), f"{OD}.baseEjectionTime", "at most"),
    (_outlier(maxEjectionTime="5m"), f"{OD}.maxEjectionTime", "got '5m'"),
    (
        _lb({"outlier_detection_experimental": {"interval": "1s"}}),
        f"{OD}.childPolicy",
        "expected a policy list (grpc requires one), got none",
    ),
    (
        _lb({"outlier_detection_experimental": {"childPolicy": None}}),
        f"{OD}.childPolicy",
        "expected a list of",
    ),
    (
        _lb({"outlier_detection_experimental": {"childPolicy": [{"pick_first": {}}]}}),
        f"{OD}.childPolicy",
        "no policy conngrpc's pool supports as a childPolicy (round_robin, "
        "least_request_experimental); got ['pick_first']",
    ),
    (
        _lb({"outlier_detection_experimental": {"childPolicy": [{"round_robin": 1}]}}),
        f"{OD}.childPolicy[0].round_robin",
        "expected an object",
    ),
    (
        _lb(
            {
                "outlier_detection_experimental": {
                    "childPolicy": [{"least_request_experimental": {"choiceCount": 0}}]
                }
            }
        ),
        f"{OD}.childPolicy[0].least_request_experimental.choiceCount",
        "got 0",
    ),
    ({"loadBalancingPolicy": 5}, "loadBalancingPolicy", "expected a str"),
    ({"loadBalancingPolicy": "pick_first"}, "loadBalancingPolicy", "got 'pick_first'"),
    (
        {"loadBalancingPolicy": "outlier_detection_experimental"},
        "loadBalancingPolicy",
        "outlier_detection_experimental needs loadBalancingConfig",
    ),
    ({"healthCheckConfig": []}, "healthCheckConfig", "expected an object, got []"),
    (
        {"healthCheckConfig": {"serviceName": 5}},
        "healthCheckConfig.serviceName",
        "expected a str, got 5",
    ),
    ({"methodConfig": None}, "methodConfig", "expected a list of method config objects, got None"),
    ({"methodConfig": [5]}, "methodConfig[0]", "expected an object, got 5"),
    (_methods({"name": {}}), "methodConfig[0].name", 'expected a list of {"service": ..., '),
    (_methods({"name": ["a.A"]}), "methodConfig[0].name[0]", "expected an object"),
    (_methods({"name": [{"service": 5}]}), "methodConfig[0].name[0].service", "expected a str"),
    (
        _methods({"name": [{"service": "a.A", "method": 5}]}),
        "methodConfig[0].name[0].method",
        "expected a str, got 5",
    ),
    (
        _methods({"name": [{"method": "M"}]}),
        "methodConfig[0].name[0]",
        "expected a service beside the method (grpc requires one), got {'method': 'M'}",
    ),
    (
        _methods({"name": [{"service": "a.A"}]}, {"name": [{"service": "a.A", "method": ""}]}),
        "methodConfig[1].name[0]",
        "expected each method name once in methodConfig, got '/a.A/' again "
        "(as methodConfig[0].name[0])",
    ),
    (
        _methods({"name": [{"service": "a.A", "method": "M"}, {"service": "a.A", "method": "M"}]}),
        "methodConfig[0].name[1]",
        "got '/a.A/M' again (as methodConfig[0].name[0])",
    ),
    (
        _methods({"name": [{}]}, {"name": [{"service": "", "method": "M"}]}),
        "methodConfig[1].name[0]",
        "got the default name again (as methodConfig[0].name[0])",
    ),
    (
        _methods({"name": [{}], "retryPolicy": A6_RETRY, "hedgingPolicy": A6_HEDGING}),
        "methodConfig[0]",
        "expected a retryPolicy or a hedgingPolicy (A6: only one of them), got both",
    ),
    (_methods({"waitForReady": "true"}), "methodConfig[0].waitForReady", "expected a bool"),
    (_methods({"timeout": 10}), "methodConfig[0].timeout", 'such as "10s" or "0.5s"'),
    (_methods({"timeout": "-1s"}), "methodConfig[0].timeout", "got '-1s'"),
    (_methods({"timeout": "1"}), "methodConfig[0].timeout", "got '1'"),
    (_methods({"timeout": "315576000001s"}), "methodConfig[0].timeout", "at most"),
    (_methods({"retryPolicy": []}), RP, "expected an object, got []"),
    (
        _methods({"retryPolicy": {}}),
        f"{RP}.maxAttempts",
        "expected an integer 2..2147483647, got none (grpc requires it)",
    ),
    (_retry(maxAttempts=1), f"{RP}.maxAttempts", "expected an integer 2..2147483647, got 1"),
    (_retry(maxAttempts=3.0), f"{RP}.maxAttempts", "got 3.0"),
    (_retry(maxAttempts="2147483648"), f"{RP}.maxAttempts", "got '2147483648'"),
    (
        _retry(initialBackoff="0.0009s"),
        f"{RP}.initialBackoff",
        "expected a duration >= 0.001s (grpc reads whole milliseconds)",
    ),
    (_retry(initialBackoff="1.5"), f"{RP}.initialBackoff", "got '1.5'"),
    (_retry(maxBackoff=None), f"{RP}.maxBackoff", "got none (grpc requires it)"),
    (_retry(maxBackoff="0s"), f"{RP}.maxBackoff", "got '0s'"),
    (_retry(backoffMultiplier=None), f"{RP}.backoffMultiplier", "got none (grpc requires it)"),
    (_retry(backoffMultiplier=0), f"{RP}.backoffMultiplier", "expected a finite number > 0"),
    (_retry(backoffMultiplier=-1.5), f"{RP}.backoffMultiplier", "got -1.5"),
    (_retry(backoffMultiplier=1e-46), f"{RP}.backoffMultiplier", "got 1e-46"),  # a C float's 0
    (_retry(backoffMultiplier="abc"), f"{RP}.backoffMultiplier", "got 'abc'"),
    (_retry(backoffMultiplier=True), f"{RP}.backoffMultiplier", "got True"),
    (_retry(backoffMultiplier="nan"), f"{RP}.backoffMultiplier", "got 'nan'"),
    (_retry(backoffMultiplier="0x10"), f"{RP}.backoffMultiplier", "got '0x10'"),
    (
        _retry(retryableStatusCodes=[]),
        f"{RP}.retryableStatusCodes",
        'expected a non-empty list of status code names such as ["UNAVAILABLE"], without OK, '
        "got []",
    ),
    (_retry(retryableStatusCodes=None), f"{RP}.retryableStatusCodes", "got none"),
    (_retry(retryableStatusCodes="UNAVAILABLE"), f"{RP}.retryableStatusCodes", "non-empty list"),
    (
        _retry(retryableStatusCodes=["unavailable"]),
        f"{RP}.retryableStatusCodes[0]",
        'expected a status code\'s name, in capitals and not OK, such as "UNAVAILABLE", '
        "got 'unavailable'",
    ),
    (_retry(retryableStatusCodes=["ABORTED", 14]), f"{RP}.retryableStatusCodes[1]", "got 14"),
    (_retry(retryableStatusCodes=["OK"]), f"{RP}.retryableStatusCodes[0]", "got 'OK'"),
    (_methods({"hedgingPolicy": 5}), HP, "expected an object, got 5"),
    (_hedging(maxAttempts=None), f"{HP}.maxAttempts", "got none (grpc requires it)"),
    (_hedging(maxAttempts=1), f"{HP}.maxAttempts", "expected an integer 2..2147483647"),
    (_hedging(hedgingDelay="-1s"), f"{HP}.hedgingDelay", "expected a duration >= 0s"),
    (_hedging(nonFatalStatusCodes=["OK"]), f"{HP}.nonFatalStatusCodes[0]", "got 'OK'"),
    (_hedging(nonFatalStatusCodes={}), f"{HP}.nonFatalStatusCodes", "expected a list"),
    ({"retryThrottling": []}, "retryThrottling", "expected an object, got []"),
    (
        {"retryThrottling": {"tokenRatio": 1}},
        "retryThrottling.maxTokens",
        "expected an integer 1..4294967295, got none (grpc requires it)",
    ),
    (_throttling(maxTokens=0), "retryThrottling.maxTokens", "1..4294967295, got 0"),
    (_throttling(maxTokens=4294967296), "retryThrottling.maxTokens", "got 4294967296"),
    (_throttling(maxTokens=10.0), "retryThrottling.maxTokens", "got 10.0"),
    (_throttling(tokenRatio=None), "retryThrottling.tokenRatio", "got none (grpc requires it)"),
    (
        _throttling(tokenRatio=0.0009),
        "retryThrottling.tokenRatio",
        "expected a number 0.001..4294967.295 written in digits, with or without a point "
        "(grpc reads 3 decimals and cuts the rest), got 0.0009",
    ),
    (_throttling(tokenRatio=-0.5), "retryThrottling.tokenRatio", "got -0.5"),
    (_throttling(tokenRatio="1e-3"), "retryThrottling.tokenRatio", "got '1e-3'"),
    (_throttling(tokenRatio=1e-5), "retryThrottling.tokenRatio", "got 1e-05"),
    (_throttling(tokenRatio="5."), "retryThrottling.tokenRatio", "got '5.'"),
    (_throttling(tokenRatio="4294967.296"), "retryThrottling.tokenRatio", "got '4294967.296'"),
    (_throttling(tokenRatio="4294968"), "retryThrottling.tokenRatio", "got '4294968'"),
    (_throttling(tokenRatio="0.+5"), "retryThrottling.tokenRatio", "got '0.+5'"),
    (_throttling(tokenRatio=True), "retryThrottling.tokenRatio", "got True"),
]


def _says(path: str, text: str) -> str:
    """A pattern for a message that names ``where``, then the path, then says ``text``."""
    prefix = f"{WHERE}: {path}: " if path else f"{WHERE}: "
    return "^" + re.escape(prefix) + r"(?:.*)" + re.escape(text)


@pytest.mark.parametrize("as_text", [False, True], ids=["dict", "json"])
@pytest.mark.parametrize(("document", "path", "text"), BAD)
def test_a_bad_document_is_refused_naming_the_json_path(
    document: dict[str, Any], path: str, text: str, as_text: bool
) -> None:
    with pytest.raises(ValueError, match=_says(path, text)):
        parse_service_config(json.dumps(document) if as_text else document)


@pytest.mark.parametrize(
    ("document", "path", "text"),
    [
        ({1: {}}, "", "expected an object whose keys are str, got 1"),
        ({"x": {"y": float("nan")}}, "x.y", "expected a finite number, got nan"),
        ({"x": [0, {1, 2}]}, "x[1]", "expected a JSON value"),
    ],
)
def test_a_dict_that_is_not_json_is_refused_naming_the_path(
    document: dict[Any, Any], path: str, text: str
) -> None:
    with pytest.raises(ValueError, match=_says(path, text)):
        parse_service_config(document)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected a JSON object, got text that is not JSON: Expecting value"),
        ("{", "expected a JSON object, got text that is not JSON: Expecting property name"),
        ('{"a": 1, "a": 2}', "expected each key once in an object, got 'a' twice"),
        ('{"x": {"y": NaN}}', "expected JSON, got NaN (not a JSON number)"),
        ('{"x": -Infinity}', "expected JSON, got -Infinity (not a JSON number)"),
        # Python reads it as inf, which each channel would get as Infinity, not JSON
        ('{"x": [1e309]}', "expected numbers a float holds, got 1e309"),
        ("[1]", "expected a JSON object, got [1]"),
    ],
)
def test_text_that_is_not_a_json_object_is_refused_with_jsons_message(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(f"{WHERE}: {says}")):
        parse_service_config(text)


@pytest.mark.parametrize("value", [None, 5, b"{}", [{"round_robin": {}}]])
def test_a_value_neither_a_mapping_nor_a_string_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=re.escape(f"{WHERE}: expected a dict or a JSON string")):
        parse_service_config(value)


def test_where_names_the_setting_in_every_message() -> None:
    with pytest.raises(ValueError, match=r"^MyPool service_config: loadBalancingConfig: "):
        parse_service_config(_lb(), where="MyPool service_config")
    with pytest.raises(TypeError, match=r"^MyPool service_config: "):
        parse_service_config(5, where="MyPool service_config")


@pytest.mark.parametrize(
    ("build", "error", "says"),
    [
        (lambda: SuccessRateEjection(enforcement_percentage=101), ValueError, "0..100"),
        (lambda: SuccessRateEjection(stdev_factor="1900"), TypeError, "expected an int"),
        (lambda: FailurePercentageEjection(threshold=-1), ValueError, "0..100"),
        (lambda: OutlierDetection(interval=0), ValueError, "expected a duration > 0s"),
        (lambda: OutlierDetection(base_ejection_time=-1.0), ValueError, ">= 0s"),
        (lambda: OutlierDetection(max_ejection_time="300s"), TypeError, "seconds"),
        (lambda: OutlierDetection(max_ejection_percent=True), TypeError, "expected an int"),
        (lambda: OutlierDetection(success_rate_ejection={}), TypeError, "SuccessRateEjection"),
        (lambda: PoolServiceConfig(pick="pick_first"), ValueError, "expected one of"),
        (lambda: PoolServiceConfig(choice_count=11), ValueError, "2..10"),
        (lambda: PoolServiceConfig(health_service=5), TypeError, "str or None"),
        (
            lambda: _retry_policy(max_attempts=6),
            ValueError,
            "max_attempts: expected an integer 2..5",
        ),
        (lambda: _retry_policy(max_attempts=1), ValueError, "2..5"),
        (lambda: _retry_policy(max_attempts=2.0), TypeError, "expected an int"),
        (lambda: _retry_policy(initial_backoff=0), ValueError, "expected a duration > 0s"),
        (lambda: _retry_policy(max_backoff="1s"), TypeError, "seconds"),
        (lambda: _retry_policy(backoff_multiplier=math.inf), ValueError, "a finite number > 0"),
        (lambda: _retry_policy(backoff_multiplier=-1), ValueError, "a finite number > 0"),
        (lambda: _retry_policy(backoff_multiplier="2"), TypeError, "expected a number"),
        (lambda: _retry_policy(retryable_status_codes=frozenset()), ValueError, "non-empty"),
        (
            lambda: _retry_policy(retryable_status_codes=frozenset({grpc.StatusCode.OK})),
            ValueError,
            "without OK",
        ),
        (
            lambda: _retry_policy(retryable_status_codes={grpc.StatusCode.UNAVAILABLE}),
            TypeError,
            "expected a frozenset of grpc.StatusCode",
        ),
        (
            lambda: _retry_policy(retryable_status_codes=frozenset({"UNAVAILABLE"})),
            TypeError,
            "expected a frozenset of grpc.StatusCode",
        ),
        (lambda: HedgingPolicy(max_attempts=1), ValueError, "2..5"),
        (lambda: HedgingPolicy(max_attempts=2, hedging_delay=-1), ValueError, ">= 0s"),
        (
            lambda: HedgingPolicy(2, non_fatal_status_codes=frozenset({grpc.StatusCode.OK})),
            ValueError,
            "without OK",
        ),
        (
            lambda: MethodPolicy(timeout=0),
            ValueError,
            "MethodPolicy.timeout: expected a duration > 0s",
        ),
        (lambda: MethodPolicy(wait_for_ready=1), TypeError, "bool or None"),
        (lambda: MethodPolicy(retry=A6_RETRY), TypeError, "RetryPolicy or None"),
        (
            lambda: MethodPolicy(retry=A6_RETRY_POLICY, hedging=HedgingPolicy(2)),
            ValueError,
            "only one of retryPolicy or hedgingPolicy",
        ),
        (lambda: RetryThrottling(max_tokens=0, token_ratio=1), ValueError, "1..4294967295"),
        (lambda: RetryThrottling(max_tokens=1, token_ratio=0), ValueError, "a finite number > 0"),
        (lambda: RetryThrottling(max_tokens=1, token_ratio=True), TypeError, "a number"),
        (lambda: PoolServiceConfig(retry_throttling={}), TypeError, "RetryThrottling or None"),
        (lambda: PoolServiceConfig(methods=[]), TypeError, "expected a Mapping"),
        (lambda: PoolServiceConfig(methods={"": None}), TypeError, "expected a MethodPolicy"),
        (
            lambda: PoolServiceConfig(methods={"a.A/M": MethodPolicy()}),
            ValueError,
            'expected keys such as "/pkg.Service/Method"',
        ),
    ],
)
def test_the_dataclasses_refuse_bad_fields_where_they_are_written(
    build: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        build()


def _retry_policy(**fields: Any) -> RetryPolicy:
    return RetryPolicy(
        **{
            "max_attempts": 3,
            "initial_backoff": 0.1,
            "max_backoff": 1.0,
            "backoff_multiplier": 2.0,
            "retryable_status_codes": frozenset({grpc.StatusCode.UNAVAILABLE}),
            **fields,
        }
    )


# --- agreement with grpc itself -------------------------------------------------------


async def _grpc_call(address: str, service_config: str) -> grpc.aio.AioRpcError | None:
    """A Peer call over a grpc.aio channel given ``service_config``: its error, if any."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.service_config", service_config)])
    try:
        await raw_unary(channel, PEER_METHOD)(b"", timeout=10)
    except grpc.aio.AioRpcError as error:
        return error
    finally:
        await channel.close()
    return None


def _refused(error: grpc.aio.AioRpcError | None) -> bool:
    """grpc refused the service config: the channel is lame, every call fails at once."""
    if error is None:
        return False
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert re.search(r"service config|JSON parsing failed", error.details() or ""), error
    return True


@pytest.mark.anyio
@pytest.mark.parametrize("document", GOOD)
async def test_grpc_accepts_each_good_document_whole(
    grpc_server: tuple[grpc.aio.Server, str], document: dict[str, Any]
) -> None:
    parse_service_config(document)
    assert await _grpc_call(grpc_server[1], json.dumps(document)) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "document",
    [
        *GOOD,
        pytest.param(_lb({"least_request_experimental": {"choiceCount": 3}}), id="lr"),
        pytest.param({"loadBalancingPolicy": "pick_first"} | _lb(ROUND_ROBIN[0]), id="legacy"),
    ],
)
async def test_grpc_accepts_what_each_channel_gets(
    grpc_server: tuple[grpc.aio.Server, str], document: dict[str, Any]
) -> None:
    passed = parse_service_config(document).channel_service_config
    assert await _grpc_call(grpc_server[1], passed or "{}") is None


@pytest.mark.anyio
async def test_the_method_config_each_channel_gets_is_in_force(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    document = {
        **A50_EXAMPLE,
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [{"name": [SLEEP], "timeout": "0.01s", "maxRequestMessageBytes": 3}],
    }
    passed = parse_service_config(json.dumps(document)).channel_service_config
    assert passed is not None
    channel = grpc.aio.insecure_channel(grpc_server[1], options=[("grpc.service_config", passed)])
    try:
        # A request of 4 bytes is over the passed methodConfig's limit: grpc applied it.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw_unary(channel, SLEEP_METHOD)(b"1000", timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The pool's timeout is not the channel's: a sleep of 300 ms, 30 times the
        # timeout, is answered (a timeout the channel kept would end it at 10 ms).
        assert await raw_unary(channel, SLEEP_METHOD)(b"300", timeout=10) == b""
        assert await raw_unary(channel, PEER_METHOD)(b"", timeout=10)  # other methods: none
    finally:
        await channel.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("given", "passed"), STRIPPED)
async def test_grpc_accepts_the_method_config_each_channel_gets(
    grpc_server: tuple[grpc.aio.Server, str], given: list[Any], passed: list[Any] | None
) -> None:
    document = json.dumps({"methodConfig": given})
    assert await _grpc_call(grpc_server[1], document) is None
    assert await _grpc_call(grpc_server[1], json.dumps({"methodConfig": passed or []})) is None


# Documents whose entries give Sleep a timeout of 10 ms, or not, in each of grpc's ways.
TIMED = {"timeout": "0.01s"}
LOOKUPS = [
    pytest.param(_methods({"name": [SLEEP], **TIMED}), id="method"),
    pytest.param(_methods({"name": [{"service": DEMO}], **TIMED}), id="service"),
    pytest.param(_methods({"name": [{}], **TIMED}), id="default"),
    pytest.param(_methods({"name": [{"service": "", "method": "Other"}], **TIMED}), id="default-2"),
    pytest.param(_methods({"name": [{"service": DEMO, "method": "Peer"}], **TIMED}), id="another"),
    pytest.param(_methods({"name": [{"service": "b.B"}], **TIMED}), id="another-service"),
    pytest.param(_methods(TIMED), id="unnamed"),
    pytest.param(_methods({"name": [SLEEP], "timeout": "0.0009s"}), id="less-than-1-ms"),
    pytest.param(
        _methods(
            {"name": [{}], **TIMED}, {"name": [{"service": DEMO}], "maxResponseMessageBytes": 99}
        ),
        id="hidden-by-the-service",
    ),
    pytest.param(
        _methods({"name": [{"service": DEMO}], **TIMED}, {"name": [SLEEP], "waitForReady": True}),
        id="hidden-by-the-method",
    ),
    pytest.param(
        _methods({"name": [{}], **TIMED}, {"name": [{"service": DEMO}], "timeout": "0s"}),
        id="hidden-by-a-timeout-of-0",
    ),
    pytest.param(
        _methods({"name": [{"service": DEMO}], **TIMED}, {"name": [{}], "timeout": "60s"}),
        id="the-service-over-the-default",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("document", LOOKUPS)
async def test_grpc_applies_the_entry_the_pool_picks_for_a_method(
    grpc_server: tuple[grpc.aio.Server, str], document: dict[str, Any]
) -> None:
    """A channel given the whole document times a call of 300 ms out exactly where the
    pool's method_policy gives the method a timeout (10 ms: 30 times shorter, so neither
    outcome depends on the machine's speed; grpcio 1.85 even ends the call at once, as
    it does with any service config timeout below 1 to 2 s)."""
    policy = parse_service_config(document).method_policy(SLEEP_METHOD)
    timeout = policy and policy.timeout
    assert timeout in (None, 0.01, 60.0)
    channel = grpc.aio.insecure_channel(
        grpc_server[1], options=[("grpc.service_config", json.dumps(document))]
    )
    try:
        if timeout == 0.01:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await raw_unary(channel, SLEEP_METHOD)(b"300")
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            assert await raw_unary(channel, SLEEP_METHOD)(b"300", timeout=20) == b""
    finally:
        await channel.close()


@pytest.mark.anyio
async def test_an_entry_left_with_its_name_alone_still_hides_a_less_specific_one(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    """The default entry limits requests to 1 byte; Demo's entry, which grpc applies
    whole to Sleep, sets no limit, and only a timeout, which each channel does not get.
    The channels' methodConfig keeps Demo's name, so Sleep's request of 3 bytes goes
    through; without it, grpc would apply the default's limit to Sleep."""
    document = _methods(
        {"name": [{}], "maxRequestMessageBytes": 1},
        {"name": [{"service": DEMO}], "timeout": "60s"},
    )
    passed = parse_service_config(document).channel_service_config
    assert passed is not None
    dropped = json.dumps(_methods({"name": [{}], "maxRequestMessageBytes": 1}))
    outcomes = []
    for service_config in (passed, dropped):
        channel = grpc.aio.insecure_channel(
            grpc_server[1], options=[("grpc.service_config", service_config)]
        )
        try:
            await raw_unary(channel, SLEEP_METHOD)(b"100", timeout=10)
            outcomes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            outcomes.append(error.code())
        finally:
            await channel.close()
    assert outcomes == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]


def _bad(document: Any, grpc_says: str, path: str) -> Any:
    return pytest.param(document, grpc_says, path, id=path.rsplit(".", 1)[-1] or "document")


# Bad documents grpc refuses too: what grpc's message names, and the parser's path.
BOTH_REFUSE = [
    _bad([], "is not an object", ""),
    _bad(_lb(), "No known policies in list", "loadBalancingConfig"),
    _bad(_lb({"bogus": {}}), "No known policies in list: bogus", "loadBalancingConfig"),
    _bad(_lb({}), "no policy found in child entry", "loadBalancingConfig[0]"),
    _bad(_lb({"a": {}, "b": {}}), "oneOf violation", "loadBalancingConfig[0]"),
    _bad(
        _lb({"round_robin": []}),
        "child entry should be of type object",
        "loadBalancingConfig[0].round_robin",
    ),
    _bad(
        _outlier(failurePercentageEjection={"threshold": 150}),
        "failurePercentageEjection.threshold",
        f"{OD}.failurePercentageEjection.threshold",
    ),
    _bad(_outlier(maxEjectionPercent=101), "max_ejection_percent", f"{OD}.maxEjectionPercent"),
    _bad(_outlier(maxEjectionPercent=-1), "field:maxEjectionPercent", f"{OD}.maxEjectionPercent"),
    _bad(_outlier(maxEjectionPercent=5.0), "field:maxEjectionPercent", f"{OD}.maxEjectionPercent"),
    _bad(_outlier(interval="1.5"), "field:interval", f"{OD}.interval"),
    _bad(_outlier(interval=10), "field:interval", f"{OD}.interval"),
    _bad(_outlier(interval="-1s"), "field:interval", f"{OD}.interval"),
    _bad(_outlier(interval="1.0000000001s"), "field:interval", f"{OD}.interval"),
    _bad(
        _outlier(baseEjectionTime="315576000001s"),
        "field:baseEjectionTime",
        f"{OD}.baseEjectionTime",
    ),
    _bad(
        _outlier(successRateEjection=[]),
        "field:successRateEjection error:is not an object",
        f"{OD}.successRateEjection",
    ),
    _bad(
        _lb({"outlier_detection_experimental": {}}),
        "field:childPolicy error:field not present",
        f"{OD}.childPolicy",
    ),
    _bad({"loadBalancingPolicy": 5}, "field:loadBalancingPolicy", "loadBalancingPolicy"),
    _bad(
        {"loadBalancingPolicy": "outlier_detection_experimental"},
        "requires a config",
        "loadBalancingPolicy",
    ),
    _bad({"healthCheckConfig": []}, "field:healthCheckConfig", "healthCheckConfig"),
    _bad(
        {"healthCheckConfig": {"serviceName": 5}},
        "field:healthCheckConfig.serviceName",
        "healthCheckConfig.serviceName",
    ),
    _bad({"methodConfig": None}, "field:methodConfig error:is not an array", "methodConfig"),
    _bad({"methodConfig": [5]}, "field:methodConfig[0] error:is not an object", "methodConfig[0]"),
    _bad(
        _methods({"name": {}}),
        "field:methodConfig[0].name error:is not an array",
        "methodConfig[0].name",
    ),
    _bad(
        _methods({"name": [{"service": 5}]}),
        "field:methodConfig[0].name[0].service error:is not a string",
        "methodConfig[0].name[0].service",
    ),
    _bad(
        _methods({"name": [{"method": "M"}]}),
        "method name populated without service name",
        "methodConfig[0].name[0]",
    ),
    _bad(
        _methods({"name": [{"service": "a.A"}]}, {"name": [{"service": "a.A", "method": ""}]}),
        "field:methodConfig[1].name[0] error:multiple method configs for path /a.A/",
        "methodConfig[1].name[0]",
    ),
    _bad(
        _methods({"name": [{}]}, {"name": [{"service": "", "method": "M"}]}),
        "field:methodConfig[1].name[0] error:duplicate default method config",
        "methodConfig[1].name[0]",
    ),
    _bad(
        _methods({"waitForReady": "true"}),
        "field:methodConfig[0].waitForReady error:is not a boolean",
        "methodConfig[0].waitForReady",
    ),
    _bad(_methods({"timeout": 10}), "field:methodConfig[0].timeout", "methodConfig[0].timeout"),
    _bad(_methods({"timeout": "-1s"}), "field:methodConfig[0].timeout", "methodConfig[0].timeout"),
    _bad(
        _methods({"timeout": "315576000001s"}),
        "field:methodConfig[0].timeout",
        "methodConfig[0].timeout",
    ),
    _bad(_methods({"retryPolicy": []}), f"field:{RP} error:is not an object", RP),
    # an entry without names is read too, as in grpc
    _bad(
        _methods({"retryPolicy": {}}),
        f"field:{RP}.maxAttempts error:field not present",
        f"{RP}.maxAttempts",
    ),
    _bad(
        _retry(maxAttempts=1),
        f"field:{RP}.maxAttempts error:must be at least 2",
        f"{RP}.maxAttempts",
    ),
    _bad(_retry(maxAttempts=3.0), f"field:{RP}.maxAttempts", f"{RP}.maxAttempts"),
    _bad(_retry(maxAttempts=2147483648), f"field:{RP}.maxAttempts", f"{RP}.maxAttempts"),
    _bad(
        _retry(initialBackoff="0.0009s"),
        f"field:{RP}.initialBackoff error:must be greater than 0",
        f"{RP}.initialBackoff",
    ),
    _bad(
        _retry(maxBackoff=None),
        f"field:{RP}.maxBackoff error:field not present",
        f"{RP}.maxBackoff",
    ),
    _bad(
        _retry(backoffMultiplier=0),
        f"field:{RP}.backoffMultiplier error:must be greater than 0",
        f"{RP}.backoffMultiplier",
    ),
    _bad(
        _retry(backoffMultiplier=1e-46),
        f"field:{RP}.backoffMultiplier error:must be greater than 0",
        f"{RP}.backoffMultiplier",
    ),
    _bad(
        _retry(backoffMultiplier="abc"), f"field:{RP}.backoffMultiplier", f"{RP}.backoffMultiplier"
    ),
    _bad(
        _retry(backoffMultiplier=True),
        f"field:{RP}.backoffMultiplier error:is not a number",
        f"{RP}.backoffMultiplier",
    ),
    _bad(
        _retry(retryableStatusCodes=[]),
        f"field:{RP}.retryableStatusCodes error:must be non-empty",
        f"{RP}.retryableStatusCodes",
    ),
    _bad(
        _retry(retryableStatusCodes=["unavailable"]),
        f"field:{RP}.retryableStatusCodes[0] error:failed to parse status code",
        f"{RP}.retryableStatusCodes[0]",
    ),
    _bad(
        _retry(retryableStatusCodes=[14]),
        f"field:{RP}.retryableStatusCodes[0] error:is not a string",
        f"{RP}.retryableStatusCodes[0]",
    ),
    _bad(
        {"retryThrottling": []}, "field:retryThrottling error:is not an object", "retryThrottling"
    ),
    _bad(
        {"retryThrottling": {"tokenRatio": 1}},
        "field:retryThrottling.maxTokens error:field not present",
        "retryThrottling.maxTokens",
    ),
    _bad(
        _throttling(maxTokens=0),
        "field:retryThrottling.maxTokens error:must be greater than 0",
        "retryThrottling.maxTokens",
    ),
    _bad(
        _throttling(maxTokens=4294967296),
        "field:retryThrottling.maxTokens",
        "retryThrottling.maxTokens",
    ),
    _bad(
        _throttling(tokenRatio=None),
        "field:retryThrottling.tokenRatio",
        "retryThrottling.tokenRatio",
    ),
    _bad(
        _throttling(tokenRatio=0.0009),
        "field:retryThrottling.tokenRatio error:must be greater than 0",
        "retryThrottling.tokenRatio",
    ),
    _bad(
        _throttling(tokenRatio="4294967.296"),  # grpc's thousandths wrap around to 0
        "field:retryThrottling.tokenRatio error:must be greater than 0",
        "retryThrottling.tokenRatio",
    ),
    _bad(
        _throttling(tokenRatio=-0.5),
        "field:retryThrottling.tokenRatio error:could not parse",
        "retryThrottling.tokenRatio",
    ),
    _bad(
        _throttling(tokenRatio="1e-3"),
        "field:retryThrottling.tokenRatio error:could not parse",
        "retryThrottling.tokenRatio",
    ),
    _bad(
        _throttling(tokenRatio="5."),
        "field:retryThrottling.tokenRatio error:could not parse",
        "retryThrottling.tokenRatio",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("document", "grpc_says", "path"), BOTH_REFUSE)
async def test_grpc_refuses_what_the_parser_refuses(
    grpc_server: tuple[grpc.aio.Server, str], document: Any, grpc_says: str, path: str
) -> None:
    text = json.dumps(document)
    with pytest.raises(ValueError, match=_says(path, "")):
        parse_service_config(text)
    error = await _grpc_call(grpc_server[1], text)
    assert _refused(error)
    assert grpc_says in (error.details() if error else "")


@pytest.mark.anyio
async def test_grpc_refuses_a_key_given_twice_as_the_parser_does(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    text = '{"loadBalancingConfig": [{"round_robin": {}}], "loadBalancingConfig": 5}'
    with pytest.raises(ValueError, match="'loadBalancingConfig' twice"):
        parse_service_config(text)
    assert _refused(await _grpc_call(grpc_server[1], text))


# Where the pool reads a document differently from grpcio, on purpose (the module's
# docstring says why): documents grpcio accepts and the pool refuses...
POOL_ONLY_REFUSES = [
    pytest.param(_lb({"pick_first": {}}), id="only-pick-first"),
    pytest.param({"loadBalancingPolicy": "pick_first"}, id="legacy-pick-first"),
    pytest.param(
        _lb({"outlier_detection_experimental": {"childPolicy": [{"pick_first": {}}]}}),
        id="child-pick-first",
    ),
    pytest.param(_outlier(interval="0s"), id="zero-interval"),
    pytest.param(_outlier(interval="-0.5s"), id="minus-zero-seconds"),
    pytest.param(_outlier(interval="+1s"), id="plus-sign"),
    pytest.param(_outlier(interval=" 1s"), id="blank"),
    pytest.param(_methods({"timeout": "+1s"}), id="timeout-plus-sign"),
    pytest.param(_retry(initialBackoff="-0.5s"), id="backoff-minus-zero-seconds"),
    pytest.param(_retry(retryableStatusCodes=["OK"]), id="retry-on-ok"),
    pytest.param(_retry(retryableStatusCodes=["UNAVAILABLE", "OK"]), id="retry-on-ok-too"),
    pytest.param(_retry(backoffMultiplier="inf"), id="multiplier-inf"),
    pytest.param(_retry(backoffMultiplier="nan"), id="multiplier-nan"),
    pytest.param(_retry(backoffMultiplier="0x10"), id="multiplier-hexadecimal"),
    # grpc core does not read hedgingPolicy at all
    pytest.param(
        _methods({"name": [{}], "retryPolicy": A6_RETRY, "hedgingPolicy": A6_HEDGING}),
        id="retry-and-hedging",
    ),
    pytest.param(_methods({"hedgingPolicy": 5}), id="hedging-not-an-object"),
    pytest.param(_hedging(maxAttempts=1), id="hedging-one-attempt"),
    pytest.param(_hedging(maxAttempts=None), id="hedging-no-attempts"),
    pytest.param(_hedging(hedgingDelay="x"), id="hedging-delay"),
    pytest.param(_hedging(nonFatalStatusCodes=["unavailable"]), id="hedging-codes"),
    # grpc's tokenRatio reading
    pytest.param(_throttling(tokenRatio="0.+5"), id="ratio-sign-after-the-point"),
    pytest.param(_throttling(tokenRatio="1 .5"), id="ratio-blank-before-the-point"),
    pytest.param(_throttling(tokenRatio="0.123abc"), id="ratio-letters-after-3-decimals"),
    pytest.param(_throttling(tokenRatio="4294968"), id="ratio-wrapping-around"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("document", POOL_ONLY_REFUSES)
async def test_where_the_pool_is_stricter_than_grpc(
    grpc_server: tuple[grpc.aio.Server, str], document: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=f"^{WHERE}: "):
        parse_service_config(document)
    assert await _grpc_call(grpc_server[1], json.dumps(document)) is None


@pytest.mark.anyio
async def test_a_number_too_large_for_a_float_is_refused_though_grpc_reads_it(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    text = '{"somethingNew": 1e309}'
    with pytest.raises(ValueError, match="expected numbers a float holds, got 1e309"):
        parse_service_config(text)
    assert await _grpc_call(grpc_server[1], text) is None
    # What each channel would have got from Python's reading: grpc refuses it.
    assert _refused(await _grpc_call(grpc_server[1], json.dumps(json.loads(text))))


@pytest.mark.anyio
async def test_least_request_is_the_pools_though_grpcio_has_none(
    grpc_server: tuple[grpc.aio.Server, str],
) -> None:
    """grpcio (unlike grpc Java and Go) registers no least_request_experimental: it
    refuses a list of only that, and takes the next entry of a longer list, where the
    pool takes least_request. Each channel gets no loadBalancingConfig, so never sees it."""
    only = _lb({"least_request_experimental": {}})
    assert parse_service_config(only).pick == "least_request"
    error = await _grpc_call(grpc_server[1], json.dumps(only))
    assert _refused(error)
    assert "No known policies in list" in (error.details() if error else "")
    longer = _lb({"least_request_experimental": {}}, {"round_robin": {}})
    assert parse_service_config(longer).pick == "least_request"
    assert await _grpc_call(grpc_server[1], json.dumps(longer)) is None


# --- as a pool setting ------------------------------------------------------------------


def test_a_bad_document_is_refused_where_the_pool_is_declared() -> None:
    bad = {"loadBalancingConfig": [{"round_robin": {}, "pick_first": {}}]}
    with pytest.raises(ValueError, match=re.escape(f"{WHERE}: loadBalancingConfig[0]")):
        Pool.child_spec(
            name="sc-bad", pool_size=1, channel={"address": "127.0.0.1:1"}, service_config=bad
        )
    with pytest.raises(ValueError, match=re.escape(WHERE)):

        class BadPool(
            Pool, pool_size=1, channel={"address": "127.0.0.1:1"}, service_config="{not json"
        ):
            pass


def test_a_service_config_at_odds_with_the_channel_is_refused_in_the_class_statement() -> None:
    options = [("grpc.service_config", "{}")]
    with pytest.raises(ValueError, match=re.escape("channel options give 'grpc.service_config'")):

        class TwicePool(
            Pool,
            pool_size=1,
            channel={"address": "127.0.0.1:1", "options": options},
            service_config={"loadBalancingConfig": ROUND_ROBIN},
        ):
            pass

    health = {"healthCheckConfig": {"serviceName": "inventory"}}
    with pytest.raises(ValueError, match=re.escape("healthCheckConfig.serviceName")):

        class OtherHealthPool(
            Pool, pool_size=1, channel={"health_check": "billing"}, service_config=health
        ):
            pass


def test_a_service_config_given_twice_is_refused() -> None:
    options = [("grpc.service_config", json.dumps({"methodConfig": []}))]
    with pytest.raises(
        ValueError, match=re.escape("channel options give 'grpc.service_config' too")
    ):
        Pool.child_spec(
            name="sc-twice",
            pool_size=1,
            channel={"address": "127.0.0.1:1", "options": options},
            service_config={"loadBalancingConfig": ROUND_ROBIN},
        )


def test_health_check_config_sets_the_channels_health_check() -> None:
    document = {"healthCheckConfig": {"serviceName": "inventory"}}
    settings = _resolved(service_config=document)
    assert settings.channel.health_check == "inventory"
    same = _resolved(
        service_config=document, channel={"address": "127.0.0.1:1", "health_check": "inventory"}
    )
    assert same.channel.health_check == "inventory"
    with pytest.raises(
        ValueError, match=re.escape("healthCheckConfig.serviceName: expected the service")
    ):
        _resolved(
            service_config=document, channel={"address": "127.0.0.1:1", "health_check": "billing"}
        )


def test_what_the_pool_leaves_alone_reaches_each_channel_and_what_it_handles_does_not() -> None:
    method_config = [{"name": [{"service": "s"}], "timeout": "1s", "maxRequestMessageBytes": 9}]
    settings = _resolved(
        service_config={
            "loadBalancingConfig": ROUND_ROBIN,
            "methodConfig": method_config,
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )
    given = dict(settings.channel.options)["grpc.service_config"]
    assert json.loads(given) == {
        "methodConfig": [{"name": [{"service": "s"}], "maxRequestMessageBytes": 9}]
    }
    assert settings.balancing.method_policy("/s/M") == MethodPolicy(timeout=1.0)
    assert settings.balancing.retry_throttling == RetryThrottling(max_tokens=10, token_ratio=0.1)
    handled_only = _resolved(service_config={"loadBalancingConfig": ROUND_ROBIN})
    assert "grpc.service_config" not in dict(handled_only.channel.options)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("document", "pick"),
    [
        (None, "least_loaded"),
        ({"loadBalancingConfig": ROUND_ROBIN}, "round_robin"),
        ({"loadBalancingPolicy": "ROUND_ROBIN"}, "round_robin"),
        (
            {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 3}}]},
            "least_request",
        ),
    ],
)
async def test_the_pool_picks_as_its_service_config_says(
    pool_name: str, document: dict[str, Any] | None, pick: str
) -> None:
    settings = {} if document is None else {"service_config": document}
    async with running_pool(pool_name, 2, fake_channel(FakeConnector()), **settings):
        runtime = pools.get(pool_name)
        assert runtime is not None
        assert runtime.handout.pick.__name__ == pick
        assert runtime.handout.pick() is not None


@pytest.mark.anyio
async def test_outlier_detection_replaces_the_default_rules(pool_name: str) -> None:
    document = json.dumps(BENCHMARK)
    async with running_pool(pool_name, 2, fake_channel(FakeConnector()), service_config=document):
        runtime = pools.get(pool_name)
        assert runtime is not None
        rules = runtime.table.ejector.rules
        assert (rules.interval, rules.base_ejection_time, rules.max_ejection_percent) == (
            1.0,
            5.0,
            50,
        )
        assert rules.consecutive_failures is None  # grpc's rules: no streak ejects at once


def _resolved(**settings: Any) -> ResolvedSettings:
    merged: dict[str, Any] = {"name": "sc", "pool_size": 1, "channel": {"address": "127.0.0.1:1"}}
    merged.update(settings)
    merged["channel"] = ChannelConfig.coerce(merged["channel"])
    return ResolvedSettings(**merged)
