"""Bad settings fail where they are written, with the error type and the setting's name."""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
import typing
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import grpc
import grpc.aio
import pytest

from conngrpc import Channel, ChannelConfig, ExponentialBackoff, Pool
from conngrpc._checks import MAX_SECONDS

ADDRESS = "localhost:50051"
FIELD_NAMES = [f.name for f in dataclasses.fields(ChannelConfig)]


class _Interceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class _OnlyNext:
    def next(self) -> float:
        return 1.0


class _NextNotCallable:
    next = 1.0

    def reset(self) -> None:
        pass


def _config(**changes: Any) -> ChannelConfig:
    return ChannelConfig(**{"address": ADDRESS, **changes})


def _names(field: str) -> str:
    """A pattern for an error message that starts by naming ``ChannelConfig.<field>``."""
    return re.escape(f"ChannelConfig.{field}:")


# --- ChannelConfig fields ----------------------------------------------------------


GOOD_ADDRESSES = [
    "localhost:50051",
    "localhost",
    "127.0.0.1:1",
    "127.0.0.1:65535",
    "[::1]:50051",
    "::1",
    "my-service.namespace.svc.cluster.local:https",
    "dns:localhost:50051",
    "dns:///localhost:50051",
    "dns://127.0.0.1:53/localhost:50051",
    "ipv4:127.0.0.1:1,127.0.0.2:2",
    "ipv6:[::1]:1,[::1]:2",
    "unix:/run/service.sock",
    "unix:///run/service.sock",
    "unix-abstract:service",
    "vsock:3:50051",
    "xds:///service",
]


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_channel_config_accepts_every_kind_of_grpc_target(address: str) -> None:
    assert ChannelConfig(address).address == address


def test_a_custom_connector_may_read_addresses_its_own_way() -> None:
    config = ChannelConfig("consul://billing", connector=lambda config: None)
    assert config.address == "consul://billing"


@pytest.mark.parametrize(
    ("key", "value"),
    [("grpc.a", 2**31 - 1), ("grpc.b", -(2**31)), ("grpc.c", "text"), ("grpc.d", b"raw")],
)
def test_channel_config_accepts_the_option_values_grpc_takes(key: str, value: object) -> None:
    assert _config(options=[(key, value)]).options == ((key, value),)


@numbers.Integral.register
class _WholeNumber:
    """A whole number that is not an int, as numpy.int64 is: grpc would read it as a pointer."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __int__(self) -> int:  # what grpc would take for a memory address
        return id(self)


def test_a_whole_number_that_is_not_an_int_reaches_grpc_as_an_int() -> None:
    (option,) = _config(options=[("grpc.keepalive_time_ms", _WholeNumber(10_000))]).options
    assert option == ("grpc.keepalive_time_ms", 10_000)
    assert type(option[1]) is int


def test_every_duration_accepts_the_longest_wait_grpc_can_take() -> None:
    config = _config(connect_timeout=MAX_SECONDS, shutdown_grace=MAX_SECONDS)
    assert config.connect_timeout == MAX_SECONDS
    assert ExponentialBackoff(min=1, max=MAX_SECONDS).maximum == MAX_SECONDS


def test_channel_config_accepts_a_valid_value_for_every_field() -> None:
    interceptor = _Interceptor()
    config = _config(
        options=[("grpc.primary_user_agent", "test")],
        credentials=grpc.ssl_channel_credentials(),
        compression=grpc.Compression.Gzip,
        interceptors=[interceptor],
        connect_timeout=1,
        backoff=ExponentialBackoff(min=0.1, max=1.0),
        on_connect=lambda: None,
        on_disconnect=lambda: None,
        connector=lambda config: None,
        mock=lambda: "channel",
        debug=True,
    )
    assert config.options == (("grpc.primary_user_agent", "test"),)
    assert config.interceptors == (interceptor,)
    assert config.connect_timeout == 1


BAD_TYPES = [
    pytest.param("address", 3, id="address-int"),
    pytest.param("address", b"localhost:1", id="address-bytes"),
    pytest.param("address", None, id="address-None"),
    pytest.param("options", {"grpc.lb_policy_name": "round_robin"}, id="options-dict"),
    pytest.param("options", "grpc.lb_policy_name", id="options-str"),
    pytest.param("options", 5, id="options-int"),
    pytest.param("options", [("grpc.a", 1, 2)], id="options-triple"),
    pytest.param("options", ["grpc.a"], id="options-non-pair"),
    pytest.param("options", [["grpc.a", 1]], id="options-list-pair"),
    pytest.param("options", [(1, "value")], id="options-int-key"),
    pytest.param("credentials", "tls", id="credentials-str"),
    pytest.param("credentials", object(), id="credentials-object"),
    pytest.param("compression", "gzip", id="compression-str"),
    pytest.param("compression", 2, id="compression-int"),
    pytest.param("interceptors", "retry", id="interceptors-str"),
    pytest.param("interceptors", object(), id="interceptors-object"),
    pytest.param("interceptors", [object()], id="interceptors-non-interceptor-item"),
    pytest.param("connect_timeout", True, id="connect_timeout-bool"),
    pytest.param("connect_timeout", "5", id="connect_timeout-str"),
    pytest.param("connect_timeout", None, id="connect_timeout-None"),
    pytest.param("backoff", object(), id="backoff-object"),
    pytest.param("backoff", None, id="backoff-None"),
    pytest.param("backoff", _OnlyNext(), id="backoff-without-reset"),
    pytest.param("backoff", _NextNotCallable(), id="backoff-next-not-callable"),
    pytest.param("on_connect", "connected", id="on_connect-str"),
    pytest.param("on_disconnect", 1, id="on_disconnect-int"),
    pytest.param("connector", "grpc.aio", id="connector-str"),
    pytest.param("mock", object(), id="mock-object"),
    pytest.param("debug", 1, id="debug-int"),
    pytest.param("debug", "yes", id="debug-str"),
    pytest.param("debug", None, id="debug-None"),
    # The class, not an instance: its next() would fail on the first failed attempt.
    pytest.param("backoff", ExponentialBackoff, id="backoff-the-class"),
    pytest.param("options", [("grpc.x", object())], id="options-object-value"),
    pytest.param("options", [("grpc.x", None)], id="options-None-value"),
    pytest.param("options", [("grpc.x", [1])], id="options-list-value"),
    # grpc would read a float as a C pointer (it has __int__).
    pytest.param("options", [("grpc.keepalive_time_ms", 1.5)], id="options-float-value"),
    # So would any other number that is not an int: refused by its type's name.
    pytest.param(
        "options", [("grpc.keepalive_time_ms", Decimal(10_000))], id="options-Decimal-value"
    ),
    pytest.param(
        "options", [("grpc.keepalive_time_ms", Fraction(10_000))], id="options-Fraction-value"
    ),
]


@pytest.mark.parametrize(("field", "value"), BAD_TYPES)
def test_channel_config_rejects_a_wrong_type_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=_names(field)):
        _config(**{field: value})


BAD_VALUES = [
    pytest.param("address", "", id="address-empty"),
    pytest.param("address", "   ", id="address-spaces"),
    pytest.param("address", "\t\n", id="address-whitespace"),
    pytest.param("connect_timeout", 0, id="connect_timeout-zero"),
    pytest.param("connect_timeout", 0.0, id="connect_timeout-zero-float"),
    pytest.param("connect_timeout", -1, id="connect_timeout-negative"),
    pytest.param("connect_timeout", math.inf, id="connect_timeout-inf"),
    pytest.param("connect_timeout", -math.inf, id="connect_timeout-minus-inf"),
    pytest.param("connect_timeout", math.nan, id="connect_timeout-nan"),
    # grpc takes milliseconds as a C int: longer waits overflow on every attempt.
    pytest.param("connect_timeout", 10**20, id="connect_timeout-overflows-grpc"),
    pytest.param("connect_timeout", MAX_SECONDS * 1.001, id="connect_timeout-over-the-bound"),
    pytest.param("shutdown_grace", 10**20, id="shutdown_grace-overflows-grpc"),
    pytest.param("shutdown_grace", -0.1, id="shutdown_grace-negative"),
    pytest.param("shutdown_grace", math.inf, id="shutdown_grace-inf"),
    # Targets grpc could never connect to: every attempt would fail for ever.
    pytest.param("address", "http://127.0.0.1:50051", id="address-unknown-scheme"),
    pytest.param("address", "127.0.0.1:99999", id="address-port-above-65535"),
    pytest.param("address", "127.0.0.1:0", id="address-port-zero"),
    pytest.param("address", "127.0.0.1:port", id="address-port-not-a-number"),
    pytest.param("address", "dns:///bad host:1", id="address-host-with-space"),
    pytest.param("address", ":50051", id="address-no-host"),
    pytest.param("address", "foo:bar:50051", id="address-two-colons"),
    pytest.param("address", "[::1:50051", id="address-unclosed-bracket"),
    pytest.param("address", "ipv4:127.0.0.1", id="address-ipv4-without-port"),
    pytest.param("address", "ipv4:localhost:1", id="address-ipv4-not-an-ip"),
    pytest.param("address", "ipv4:[::1]:1", id="address-ipv4-given-ipv6"),
    pytest.param("address", "ipv6:127.0.0.1:1", id="address-ipv6-given-ipv4"),
    pytest.param("address", "unix:", id="address-unix-without-path"),
    # Option values grpc rejects on every attempt, or misreads.
    pytest.param("options", [("grpc.max_send_message_length", 2**31)], id="options-int-overflow"),
    pytest.param("options", [("", 1)], id="options-empty-key"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_channel_config_rejects_a_bad_value_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=_names(field)):
        _config(**{field: value})


# --- ChannelConfig.coerce ------------------------------------------------------------


def test_coerce_builds_a_config_from_a_dict() -> None:
    config = ChannelConfig.coerce({"address": ADDRESS, "connect_timeout": 2, "debug": True})
    assert isinstance(config, ChannelConfig)
    assert (config.address, config.connect_timeout, config.debug) == (ADDRESS, 2, True)


def test_coerce_returns_a_config_as_it_is() -> None:
    config = ChannelConfig(ADDRESS)
    assert ChannelConfig.coerce(config) is config


def test_coerce_rejects_an_unknown_key_naming_it_and_the_valid_keys() -> None:
    valid = "valid keys are " + ", ".join(FIELD_NAMES)
    with pytest.raises(TypeError, match=re.escape("'adress'")) as raised:
        ChannelConfig.coerce({"address": ADDRESS, "adress": ADDRESS})
    assert valid in str(raised.value)


def test_coerce_requires_an_address() -> None:
    with pytest.raises(TypeError, match="'address' is required"):
        ChannelConfig.coerce({"connect_timeout": 2})


@pytest.mark.parametrize(
    "value", [ADDRESS, [("address", ADDRESS)], None, 3], ids=["str", "pairs", "None", "int"]
)
def test_coerce_rejects_a_non_mapping(value: object) -> None:
    with pytest.raises(TypeError, match="expected a ChannelConfig or a dict of its fields"):
        ChannelConfig.coerce(value)  # type: ignore[arg-type]


def test_coerce_passes_on_a_field_error() -> None:
    with pytest.raises(ValueError, match=_names("connect_timeout")):
        ChannelConfig.coerce({"address": ADDRESS, "connect_timeout": -1})


# --- ChannelConfig.merged ------------------------------------------------------------


def test_merged_lays_a_partial_dict_over_the_config() -> None:
    config = ChannelConfig(ADDRESS, connect_timeout=2, debug=True)
    merged = config.merged({"connect_timeout": 3})
    assert (merged.address, merged.connect_timeout, merged.debug) == (ADDRESS, 3, True)
    assert config.connect_timeout == 2


def test_merged_with_a_whole_config_is_that_config() -> None:
    other = ChannelConfig("other:1")
    assert ChannelConfig(ADDRESS, debug=True).merged(other) is other


def test_merged_rejects_an_unknown_key_naming_it() -> None:
    with pytest.raises(TypeError, match=r"unknown key.*'timeout'"):
        ChannelConfig(ADDRESS).merged({"timeout": 3})


def test_merged_checks_the_new_values() -> None:
    with pytest.raises(ValueError, match=_names("address")):
        ChannelConfig(ADDRESS).merged({"address": ""})


def test_merged_rejects_a_non_mapping() -> None:
    with pytest.raises(TypeError, match="expected a ChannelConfig or a dict of its fields"):
        ChannelConfig(ADDRESS).merged("other:1")  # type: ignore[arg-type]


# --- Pool.child_spec -----------------------------------------------------------------


def _pool_spec(**changes: Any) -> Any:
    return Pool.child_spec(
        **{"name": "pool", "pool_size": 1, "channel": {"address": ADDRESS}, **changes}
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("pool_size", 1),
        ("max_restarts", 0),
        ("telemetry_interval", 0.001),
        ("max_seconds", 1),
    ],
)
def test_pool_child_spec_accepts_a_boundary_value(setting: str, value: object) -> None:
    spec = _pool_spec(**{setting: value})
    assert (spec.id, spec.type) == ("pool", "supervisor")


POOL_BAD_TYPES = [
    pytest.param("name", 3, "Pool name:", id="name-int"),
    pytest.param("name", None, "Pool name: expected a str, got None", id="name-None"),
    pytest.param(
        "pool_size", None, "Pool pool_size: expected an int >= 1, got None", id="size-None"
    ),
    pytest.param("channel", None, "Pool channel: expected a ChannelConfig", id="channel-None"),
    pytest.param("pool_size", 1.5, "Pool pool_size:", id="pool_size-float"),
    pytest.param("pool_size", True, "Pool pool_size:", id="pool_size-bool"),
    pytest.param("pool_size", "2", "Pool pool_size:", id="pool_size-str"),
    pytest.param("telemetry_interval", "5", "Pool telemetry_interval:", id="telemetry-str"),
    pytest.param("telemetry_interval", True, "Pool telemetry_interval:", id="telemetry-bool"),
    pytest.param("max_restarts", 1.5, "Pool max_restarts:", id="max_restarts-float"),
    pytest.param("max_restarts", False, "Pool max_restarts:", id="max_restarts-bool"),
    pytest.param("max_seconds", "5", "Pool max_seconds:", id="max_seconds-str"),
    pytest.param("channel", ADDRESS, "channel: expected a ChannelConfig", id="channel-str"),
    pytest.param(
        "channel", {"address": ADDRESS, "adress": 1}, "channel: unknown key", id="channel-bad-key"
    ),
    pytest.param("channel", {"address": 3}, "ChannelConfig.address:", id="channel-bad-type"),
]


@pytest.mark.parametrize(("setting", "value", "names"), POOL_BAD_TYPES)
def test_pool_child_spec_rejects_a_wrong_type_naming_the_setting(
    setting: str, value: object, names: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(names)):
        _pool_spec(**{setting: value})


POOL_BAD_VALUES = [
    pytest.param("name", "", "Pool name:", id="name-empty"),
    pytest.param("pool_size", -1, "Pool pool_size:", id="pool_size-negative"),
    pytest.param("pool_size", 0, "Pool pool_size: expected an int >= 1, got 0", id="pool_size-0"),
    pytest.param("telemetry_interval", 0, "Pool telemetry_interval:", id="telemetry-zero"),
    pytest.param("telemetry_interval", -1, "Pool telemetry_interval:", id="telemetry-negative"),
    pytest.param("telemetry_interval", math.inf, "Pool telemetry_interval:", id="telemetry-inf"),
    pytest.param("telemetry_interval", math.nan, "Pool telemetry_interval:", id="telemetry-nan"),
    pytest.param("max_restarts", -1, "Pool max_restarts:", id="max_restarts-negative"),
    pytest.param("max_seconds", 0, "Pool max_seconds:", id="max_seconds-zero"),
    pytest.param("max_seconds", -1, "Pool max_seconds:", id="max_seconds-negative"),
    pytest.param("max_seconds", math.inf, "Pool max_seconds:", id="max_seconds-inf"),
    pytest.param("max_seconds", 10**20, "Pool max_seconds:", id="max_seconds-huge"),
    pytest.param("telemetry_interval", 10**20, "Pool telemetry_interval:", id="telemetry-huge"),
    pytest.param("channel", {"address": ""}, "ChannelConfig.address:", id="channel-address"),
    pytest.param(
        "channel",
        {"address": ADDRESS, "connect_timeout": 0},
        "ChannelConfig.connect_timeout:",
        id="channel-connect_timeout",
    ),
]


@pytest.mark.parametrize(("setting", "value", "names"), POOL_BAD_VALUES)
def test_pool_child_spec_rejects_a_bad_value_naming_the_setting(
    setting: str, value: object, names: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        _pool_spec(**{setting: value})


# --- the Pool class statement ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1])
def test_class_statement_rejects_a_pool_size_below_one(size: int) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"Pool pool_size: expected an int >= 1, got {size}")
    ):

        class Bad(Pool, pool_size=size):
            pass


def test_class_statement_rejects_an_unknown_channel_key() -> None:
    with pytest.raises(TypeError, match=re.escape("class Bad: channel: unknown key(s) 'adress'")):

        class Bad(Pool, pool_size=1, channel={"adress": ADDRESS}):
            pass


def test_class_statement_rejects_a_bad_value_in_a_partial_channel() -> None:
    with pytest.raises(ValueError, match=_names("connect_timeout")):

        class Bad(Pool, pool_size=1, channel={"connect_timeout": 0}):
            pass


def test_class_statement_accepts_a_partial_channel_without_address() -> None:
    class Partial(Pool, pool_size=1, channel={"connect_timeout": 2}):
        pass

    assert Partial.child_spec(channel={"address": ADDRESS}).id == "Partial"


def test_child_spec_without_any_address_is_an_error() -> None:
    class Partial(Pool, pool_size=1, channel={"connect_timeout": 2}):
        pass

    with pytest.raises(TypeError, match="'address' is required"):
        Partial.child_spec()


# --- Channel.child_spec ----------------------------------------------------------------


def test_channel_child_spec_is_named_after_the_channel() -> None:
    assert Channel.child_spec(name="billing", channel={"address": ADDRESS}).id == "billing"


def test_channel_child_spec_rejects_an_empty_name() -> None:
    with pytest.raises(ValueError, match="Channel name:"):
        Channel.child_spec(name="", channel={"address": ADDRESS})


def test_channel_child_spec_rejects_a_non_str_name() -> None:
    with pytest.raises(TypeError, match="Channel name:"):
        Channel.child_spec(name=3, channel={"address": ADDRESS})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channel", "names"),
    [
        pytest.param(ADDRESS, "channel: expected a ChannelConfig", id="str"),
        pytest.param({"adress": ADDRESS}, "channel: unknown key", id="unknown-key"),
        pytest.param({"connect_timeout": 2}, "channel: 'address' is required", id="no-address"),
    ],
)
def test_channel_child_spec_rejects_a_bad_channel(channel: object, names: str) -> None:
    with pytest.raises(TypeError, match=re.escape(names)):
        Channel.child_spec(name="billing", channel=channel)  # type: ignore[arg-type]


# --- ExponentialBackoff ----------------------------------------------------------------


BACKOFF_BAD_VALUES = [
    pytest.param({"min": 0}, "min", id="min-zero"),
    pytest.param({"min": -1}, "min", id="min-negative"),
    pytest.param({"min": math.inf, "max": math.inf}, "min", id="min-inf"),
    pytest.param({"min": math.nan}, "min", id="min-nan"),
    pytest.param({"min": 2, "max": 1}, "max", id="max-below-min"),
    pytest.param({"max": math.inf}, "max", id="max-inf"),
    pytest.param({"max": math.nan}, "max", id="max-nan"),
    pytest.param({"multiplier": 0.5}, "multiplier", id="multiplier-below-1"),
    pytest.param({"multiplier": 0}, "multiplier", id="multiplier-zero"),
    pytest.param({"multiplier": math.nan}, "multiplier", id="multiplier-nan"),
    pytest.param({"jitter": -0.1}, "jitter", id="jitter-negative"),
    pytest.param({"jitter": 1.5}, "jitter", id="jitter-above-1"),
    pytest.param({"jitter": math.nan}, "jitter", id="jitter-nan"),
    pytest.param({"max": 10**20}, "max", id="max-overflows-grpc"),
    pytest.param({"min": 10**20, "max": 10**20}, "min", id="min-overflows-grpc"),
    pytest.param({"multiplier": math.inf}, "multiplier", id="multiplier-inf"),
]


@pytest.mark.parametrize(("arguments", "field"), BACKOFF_BAD_VALUES)
def test_exponential_backoff_rejects_a_bad_value_naming_it(
    arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"ExponentialBackoff.{field}:")):
        ExponentialBackoff(**arguments)


@pytest.mark.parametrize("value", ["1", True], ids=["str", "bool"])
@pytest.mark.parametrize("field", ["min", "max", "multiplier", "jitter"])
def test_exponential_backoff_rejects_a_non_number_naming_it(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=re.escape(f"ExponentialBackoff.{field}:")):
        ExponentialBackoff(**{field: value})  # type: ignore[arg-type]


# --- run-time type hints ----------------------------------------------------------------


def _public_dataclasses() -> list[type]:
    import conngrpc

    found = [getattr(conngrpc, name) for name in conngrpc.__all__]
    return [obj for obj in found if isinstance(obj, type) and dataclasses.is_dataclass(obj)]


@pytest.mark.parametrize("cls", _public_dataclasses(), ids=lambda cls: cls.__name__)
def test_type_hints_of_every_public_dataclass_resolve_at_run_time(cls: type) -> None:
    """pydantic, cattrs and sphinx call typing.get_type_hints; it must not raise NameError."""
    hints = typing.get_type_hints(cls)
    assert set(hints) >= {f.name for f in dataclasses.fields(cls)}


def _public_functions() -> list[tuple[str, Callable[..., Any]]]:
    """Every public function, and every method of a public class (its own and those it
    inherits from conngrpc's classes), of conngrpc and conngrpc.sync."""
    import conngrpc
    import conngrpc.sync

    found: dict[str, Callable[..., Any]] = {}
    for module in (conngrpc, conngrpc.sync):
        prefix = "" if module is conngrpc else "sync."
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                found[prefix + name] = obj
            elif isinstance(obj, type):
                for klass in obj.__mro__:
                    if not klass.__module__.startswith("conngrpc"):
                        continue
                    for attribute, value in vars(klass).items():
                        function = getattr(value, "__func__", value)  # class/staticmethods
                        if inspect.isfunction(function):
                            found.setdefault(f"{prefix}{name}.{attribute}", function)
    return list(found.items())


@pytest.mark.parametrize(("name", "function"), _public_functions(), ids=lambda x: x)
def test_type_hints_of_every_public_function_resolve_at_run_time(
    name: str, function: Callable[..., Any]
) -> None:
    """sphinx's autodoc calls typing.get_type_hints on signatures too."""
    typing.get_type_hints(function)


def test_the_public_functions_include_the_pool_s() -> None:
    names = {name for name, _ in _public_functions()}
    assert {"Pool.child_spec", "Pool.__init_subclass__", "Pool.get_channel"} <= names
    assert {"sync.Pool.child_spec", "sync.Pool.__init_subclass__", "sync.Pool.channel"} <= names


def test_the_public_dataclasses_include_the_configs() -> None:
    names = {cls.__name__ for cls in _public_dataclasses()}
    assert {"ChannelConfig", "ChildSpec", "PoolStatus", "ChildInfo", "ChildCounts"} <= names
