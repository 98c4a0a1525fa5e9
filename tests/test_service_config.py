"""A pool reads grpc's service config as grpc does: its pick, A50's ejection, its health.

The parser's reading is checked against grpc's own: each good document is given to a
real grpc.aio channel as ``grpc.service_config`` and a call goes through; each bad one
that grpc also refuses fails grpc's calls too; where the two differ, a test says so.
"""

from __future__ import annotations

import json
import re
import types
from typing import Any

import anyio
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
    OutlierDetection,
    PoolServiceConfig,
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

METHOD_CONFIG = [{"name": [{"service": "conngrpc.demo.v1.Demo"}], "timeout": "2s"}]


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
    document = {
        "methodConfig": METHOD_CONFIG,
        **A50_EXAMPLE,
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "loadBalancingPolicy": "round_robin",
        "healthCheckConfig": {"serviceName": ""},
        "somethingNew": {"a": [1, 2.5, None, True]},
    }
    parsed = parse_service_config(document)
    assert parsed.channel_service_config is not None
    passed = json.loads(parsed.channel_service_config)
    assert passed == {key: value for key, value in document.items() if key not in POOL_FIELDS}
    assert list(passed) == ["methodConfig", "retryThrottling", "somethingNew"]  # in order


def test_nothing_left_for_the_channels_is_none() -> None:
    assert parse_service_config(A50_EXAMPLE).channel_service_config is None
    assert parse_service_config({"healthCheckConfig": {}}).channel_service_config is None


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
    ],
)
def test_the_dataclasses_refuse_bad_fields_where_they_are_written(
    build: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        build()


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
    sleep = {"service": "conngrpc.demo.v1.Demo", "method": "Sleep"}
    document = {
        **A50_EXAMPLE,
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [{"name": [sleep], "timeout": "0.2s"}],
    }
    passed = parse_service_config(json.dumps(document)).channel_service_config
    assert passed is not None
    channel = grpc.aio.insecure_channel(grpc_server[1], options=[("grpc.service_config", passed)])
    try:
        # The server would sleep 30 s; only the passed methodConfig's 0.2 s timeout ends
        # the call, so a DEADLINE_EXCEEDED well before 20 s shows grpc applied it.
        with anyio.fail_after(20), pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw_unary(channel, SLEEP_METHOD)(b"30000")
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await raw_unary(channel, PEER_METHOD)(b"", timeout=10)  # other methods: none
    finally:
        await channel.close()


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
    method_config = [{"name": [{"service": "s"}], "timeout": "1s"}]
    settings = _resolved(
        service_config={"loadBalancingConfig": ROUND_ROBIN, "methodConfig": method_config}
    )
    given = dict(settings.channel.options)["grpc.service_config"]
    assert json.loads(given) == {"methodConfig": method_config}
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
