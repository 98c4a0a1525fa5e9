"""grpc's service config as a pool reads it (private): the pick, outlier ejection, health.

A pool takes the same document a user would give grpc as ``grpc.service_config`` (a
dict or a JSON string) and handles three of its fields itself, across its connections:
``loadBalancingConfig`` (or the legacy ``loadBalancingPolicy``) chooses the pick and
the outlier ejection rules (gRFC A50), and ``healthCheckConfig.serviceName`` the
channels' health check (gRFC A17). The rest (``methodConfig``, ``retryThrottling``,
anything else) is what each channel gets, unchanged.

The policy list is read as grpc reads it: the first entry whose policy the pool
supports wins, entries before it that it does not support are skipped (each must still
be an object with one key whose value is an object), entries after it are not read,
and unknown fields in a policy's config are ignored. A JSON ``null`` field reads as an
absent one, as in grpc, except where a policy list belongs. Where the pool reads a
document differently from grpc core (grpcio), it is stricter, or it supports a policy
grpcio lacks:

- ``least_request_experimental`` (grpc Java and Go have it; grpcio does not): the
  pool supports it, with grpc's rules (``choiceCount`` at least 2, above 10 read as 10).
- ``pick_first`` and grpc's other policies are skipped, and a list of nothing else is an
  error: the pool has no use for them (``pick_first`` in a ``childPolicy`` too). So is
  a legacy ``loadBalancingPolicy`` naming one; beside a ``loadBalancingConfig``, the
  legacy name is not read (grpc refuses one it does not know even there).
- An ``interval`` of ``0s`` is an error: the pool's sweep would never pause.
- Durations are written as protobuf's JSON writes them (``"10s"``, ``"0.5s"``): grpc's
  parser also lets through blanks, a ``+`` and ``"-0.5s"``, which the pool refuses.
- A number too large for a float (``1e309``) is an error: grpc reads it, but Python reads
  it as infinity, which each channel would get as ``Infinity``, not JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple, TypeVar, get_args

__all__ = [
    "POOL_FIELDS",
    "FailurePercentageEjection",
    "OutlierDetection",
    "Pick",
    "PoolServiceConfig",
    "SuccessRateEjection",
    "parse_service_config",
]

#: The document's fields the pool handles itself; each channel gets the rest.
POOL_FIELDS = ("loadBalancingConfig", "loadBalancingPolicy", "healthCheckConfig")

#: grpc reads A50's counts and percentages as uint32.
UINT32_MAX = 2**32 - 1
#: The longest duration grpc reads (protobuf's Duration: 10,000 years).
MAX_DURATION = 315_576_000_000
#: grpc clamps a least_request ``choiceCount`` above this to it.
MAX_CHOICE_COUNT = 10

Pick = Literal["least_loaded", "round_robin", "least_request"]

_POLICIES = ("round_robin", "least_request_experimental", "outlier_detection_experimental")
_CHILD_POLICIES = _POLICIES[:2]
_DURATION = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))?s")


class _Field(NamedTuple):
    """One A50 field: its JSON name, its attribute, and what it holds."""

    json: str
    attr: str
    highest: int = UINT32_MAX  # an integer lowest..highest
    lowest: int = 0
    duration: bool = False  # seconds instead, written "10s" in JSON
    positive: bool = False  # a duration that must be > 0


_SUCCESS_RATE_FIELDS = (
    _Field("stdevFactor", "stdev_factor"),
    _Field("enforcementPercentage", "enforcement_percentage", 100),
    _Field("minimumHosts", "minimum_hosts"),
    _Field("requestVolume", "request_volume"),
)
_FAILURE_PERCENTAGE_FIELDS = (
    _Field("threshold", "threshold", 100),
    _Field("enforcementPercentage", "enforcement_percentage", 100),
    _Field("minimumHosts", "minimum_hosts"),
    _Field("requestVolume", "request_volume"),
)
_CHOICE_COUNT = _Field("choiceCount", "choice_count", MAX_CHOICE_COUNT, lowest=2)
_OUTLIER_FIELDS = (
    _Field("interval", "interval", duration=True, positive=True),
    _Field("baseEjectionTime", "base_ejection_time", duration=True),
    _Field("maxEjectionTime", "max_ejection_time", duration=True),
    _Field("maxEjectionPercent", "max_ejection_percent", 100),
)


@dataclass(frozen=True, slots=True)
class SuccessRateEjection:
    """gRFC A50's ``successRateEjection``, with grpc's defaults.

    A backend whose success rate falls below the mean by ``stdev_factor / 1000``
    standard deviations is ejected, with probability ``enforcement_percentage`` %, when
    at least ``minimum_hosts`` backends each had ``request_volume`` calls in the interval.

    :raises TypeError: a field is not an int.
    :raises ValueError: a field is out of range (percentages 0..100, counts uint32).
    """

    stdev_factor: int = 1900
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100

    def __post_init__(self) -> None:
        _check_fields(self, _SUCCESS_RATE_FIELDS)


@dataclass(frozen=True, slots=True)
class FailurePercentageEjection:
    """gRFC A50's ``failurePercentageEjection``, with grpc's defaults.

    A backend with more than ``threshold`` % failed calls is ejected, with probability
    ``enforcement_percentage`` %, when at least ``minimum_hosts`` backends each had
    ``request_volume`` calls in the interval (the backend itself included).

    :raises TypeError: a field is not an int.
    :raises ValueError: a field is out of range (percentages 0..100, counts uint32).
    """

    threshold: int = 85
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50

    def __post_init__(self) -> None:
        _check_fields(self, _FAILURE_PERCENTAGE_FIELDS)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """gRFC A50's ``outlier_detection_experimental``, durations in seconds, grpc's defaults.

    Every ``interval`` the rules run over the calls counted since the last run; an
    ejected backend comes back after the ejection time (``ejection.Rules``). With neither rule set,
    nothing is ever ejected (A50). ``max_ejection_time`` is stored as written; the
    cap that applies is ``max(base_ejection_time, max_ejection_time)``, as in grpc.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: a field is out of range (``interval`` > 0, the other durations
        >= 0, all at most 315576000000 s; ``max_ejection_percent`` 0..100).
    """

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate_ejection: SuccessRateEjection | None = None
    failure_percentage_ejection: FailurePercentageEjection | None = None

    def __post_init__(self) -> None:
        _check_fields(self, _OUTLIER_FIELDS)
        _check_type(
            "OutlierDetection.success_rate_ejection",
            self.success_rate_ejection,
            SuccessRateEjection,
        )
        _check_type(
            "OutlierDetection.failure_percentage_ejection",
            self.failure_percentage_ejection,
            FailurePercentageEjection,
        )


@dataclass(frozen=True, slots=True)
class PoolServiceConfig:
    """What a pool takes from a service config document.

    ``pick``: ``least_loaded`` (conngrpc's own, when the document names no policy),
    ``round_robin`` or ``least_request`` (the less loaded of ``choice_count`` picked at
    random). ``outlier_detection``: the user's A50 rules, or None when the document
    names none (the pool's default rules apply). ``health_service``: the service a
    channel's health check asks about (``healthCheckConfig.serviceName``).
    ``channel_service_config``: the JSON each channel gets, the document without
    :data:`POOL_FIELDS`; None when nothing is left.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: ``pick`` is not a known pick, ``choice_count`` not 2..10.
    """

    pick: Pick = "least_loaded"
    choice_count: int = 2
    outlier_detection: OutlierDetection | None = None
    health_service: str | None = None
    channel_service_config: str | None = None

    def __post_init__(self) -> None:
        if self.pick not in get_args(Pick):
            picks = ", ".join(get_args(Pick))
            raise ValueError(f"PoolServiceConfig.pick: expected one of {picks}, got {self.pick!r}")
        _check_fields(self, (_CHOICE_COUNT,))
        _check_type("PoolServiceConfig.outlier_detection", self.outlier_detection, OutlierDetection)
        _check_type("PoolServiceConfig.health_service", self.health_service, str)
        _check_type("PoolServiceConfig.channel_service_config", self.channel_service_config, str)


def parse_service_config(value: object, where: str = "Pool service_config") -> PoolServiceConfig:
    """Read a grpc service config document (a dict or a JSON string) as a pool does.

    Example::

        parse_service_config({"loadBalancingConfig": [{"outlier_detection_experimental": {
            "failurePercentageEjection": {"threshold": 25},
            "childPolicy": [{"round_robin": {}}]}}]})

    :raises TypeError: ``value`` is neither a Mapping nor a str.
    :raises ValueError: the text is not JSON, the document is not an object, its policy
        list names no policy the pool supports, or a field is wrong; the message starts
        with ``where`` and the field's JSON path.
    """
    document = _document(where, value)
    picked = _load_balancing(where, document)
    rest = {key: item for key, item in document.items() if key not in POOL_FIELDS}
    return replace(
        picked,
        health_service=_health_service(where, document),
        channel_service_config=json.dumps(rest) if rest else None,
    )


def _document(where: str, value: object) -> dict[str, Any]:
    if isinstance(value, str):

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            read: dict[str, Any] = {}
            for key, item in pairs:
                if key in read:  # grpc refuses a key given twice too
                    raise ValueError(
                        f"{where}: expected each key once in an object, got {key!r} twice"
                    )
                read[key] = item
            return read

        def no_constant(name: str) -> Any:
            raise ValueError(f"{where}: expected JSON, got {name} (not a JSON number)")

        def finite(text: str) -> float:
            number = float(text)
            if not math.isfinite(number):  # each channel would get it as Infinity
                raise ValueError(f"{where}: expected numbers a float holds, got {text}")
            return number

        try:
            document = json.loads(
                value,
                object_pairs_hook=no_duplicates,
                parse_constant=no_constant,
                parse_float=finite,
            )
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: expected a JSON object, got text that is not JSON: {exc}"
            ) from None
    elif isinstance(value, Mapping):
        document = _plain(where, "", value)
    else:
        raise TypeError(f"{where}: expected a dict or a JSON string, got {value!r}")
    if not isinstance(document, dict):
        raise _error(where, "", "a JSON object", document)
    return document


def _plain(where: str, path: str, value: object) -> Any:
    """``value`` as the plain JSON json.loads would give (dicts, lists, ...), or an error."""
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _error(where, path, "an object whose keys are str", key)
            plain[key] = _plain(where, _key(path, key), item)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(where, f"{path}[{index}]", item) for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(where, path, "a finite number", value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise _error(where, path, "a JSON value (dict, list, str, int, float, bool or None)", value)


def _load_balancing(where: str, document: dict[str, Any]) -> PoolServiceConfig:
    """The pick and outlier detection the document's policy names; the default without one."""
    legacy = document.get("loadBalancingPolicy")
    if legacy is not None and not isinstance(legacy, str):
        raise _error(where, "loadBalancingPolicy", "a str (a policy's name)", legacy)
    if "loadBalancingConfig" in document:  # it wins over the legacy field, as in grpc
        path, name, config = _first_supported(
            where, "loadBalancingConfig", document["loadBalancingConfig"], _POLICIES
        )
        return _policy(where, path, name, config)
    if legacy:  # "" names no policy, as in grpc
        name = legacy.lower()  # grpc reads the legacy name in any case
        if name not in _CHILD_POLICIES:
            raise _error(
                where,
                "loadBalancingPolicy",
                "round_robin or least_request_experimental, the policies conngrpc's pool "
                "supports by name (outlier_detection_experimental needs loadBalancingConfig)",
                legacy,
            )
        return _policy(where, "loadBalancingPolicy", name, {})
    return PoolServiceConfig()


def _first_supported(
    where: str, path: str, value: object, supported: tuple[str, ...]
) -> tuple[str, str, dict[str, Any]]:
    """The first entry of a policy list the pool supports: its path, name and config."""
    if not isinstance(value, list):
        raise _error(where, path, "a list of {policy name: config} objects", value)
    skipped: list[str] = []
    for index, entry in enumerate(value):
        at = f"{path}[{index}]"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise _error(where, at, "an object with exactly one key, a policy's name", entry)
        ((name, config),) = entry.items()
        if not isinstance(config, dict):
            raise _error(where, _key(at, name), "an object (the policy's config)", config)
        if name in supported:
            return _key(at, name), name, config
        skipped.append(name)
    there = "" if supported == _POLICIES else " as a childPolicy"
    raise ValueError(
        f"{where}: {path}: no policy conngrpc's pool supports{there} "
        f"({', '.join(supported)}); got {skipped!r}"
    )


def _policy(where: str, path: str, name: str, config: dict[str, Any]) -> PoolServiceConfig:
    """What a supported policy's config says about the pick and ejection."""
    if name == "round_robin":
        return PoolServiceConfig(pick="round_robin")
    if name == "least_request_experimental":
        count = config.get("choiceCount")
        if count is None:
            return PoolServiceConfig(pick="least_request")
        at = _key(path, "choiceCount")  # grpc reads any uint32 >= 2, then clamps it to 10
        count = _json_value(where, at, count, _CHOICE_COUNT._replace(highest=UINT32_MAX))
        return PoolServiceConfig(pick="least_request", choice_count=min(count, MAX_CHOICE_COUNT))
    outlier = OutlierDetection(
        **_json_fields(where, path, config, _OUTLIER_FIELDS),
        success_rate_ejection=_rule(
            where, path, config, "successRateEjection", SuccessRateEjection, _SUCCESS_RATE_FIELDS
        ),
        failure_percentage_ejection=_rule(
            where,
            path,
            config,
            "failurePercentageEjection",
            FailurePercentageEjection,
            _FAILURE_PERCENTAGE_FIELDS,
        ),
    )
    at = _key(path, "childPolicy")
    if "childPolicy" not in config:
        raise ValueError(f"{where}: {at}: expected a policy list (grpc requires one), got none")
    child_path, child, child_config = _first_supported(
        where, at, config["childPolicy"], _CHILD_POLICIES
    )
    return replace(_policy(where, child_path, child, child_config), outlier_detection=outlier)


_Rule = TypeVar("_Rule", SuccessRateEjection, FailurePercentageEjection)


def _rule(
    where: str,
    path: str,
    config: dict[str, Any],
    name: str,
    kind: Callable[..., _Rule],
    fields: tuple[_Field, ...],
) -> _Rule | None:
    """One of A50's two ejection rules, when the config names it."""
    rule = config.get(name)
    if rule is None:
        return None
    at = _key(path, name)
    if not isinstance(rule, dict):
        raise _error(where, at, "an object", rule)
    return kind(**_json_fields(where, at, rule, fields))


def _health_service(where: str, document: dict[str, Any]) -> str | None:
    health = document.get("healthCheckConfig")
    if health is None:
        return None
    if not isinstance(health, dict):
        raise _error(where, "healthCheckConfig", "an object", health)
    name = health.get("serviceName")
    if name is not None and not isinstance(name, str):
        raise _error(where, "healthCheckConfig.serviceName", "a str", name)
    return name


def _json_fields(
    where: str, path: str, config: dict[str, Any], fields: tuple[_Field, ...]
) -> dict[str, Any]:
    """The attributes the config's fields give (absent and null ones left to defaults)."""
    read: dict[str, Any] = {}
    for field in fields:
        value = config.get(field.json)
        if value is not None:
            read[field.attr] = _json_value(where, _key(path, field.json), value, field)
    return read


def _json_value(where: str, path: str, value: object, field: _Field) -> Any:
    """A field's JSON value read as grpc reads it, or a ValueError naming the path.

    A duration is protobuf's JSON Duration (decimal seconds, up to 9 decimals, then
    ``s``); an integer a JSON integer or a string of one (protobuf's JSON allows both,
    and grpc reads both), never a float, not even 1.0, which grpc refuses too.
    """
    number: float | int | None = None
    if field.duration:
        written = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if written is not None:
            number = int(written[1]) + int((written[2] or "").ljust(9, "0")) / 1e9
    elif isinstance(value, str):
        if re.fullmatch(r"\+?[0-9]+", value.strip(" \t\n\v\f\r")):
            number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    return _check_number(f"{where}: {path}", number, field, shown=value)


def _check_fields(obj: object, fields: tuple[_Field, ...]) -> None:
    """A dataclass's __post_init__: each of its fields of the table checked."""
    for field in fields:
        where = f"{type(obj).__name__}.{field.attr}"
        value = getattr(obj, field.attr)
        if isinstance(value, bool) or not isinstance(
            value, (float, int) if field.duration else int
        ):
            kind = "seconds (an int or a float)" if field.duration else "an int"
            raise TypeError(f"{where}: expected {kind}, got {value!r}")
        _check_number(where, value, field, shown=value)


def _check_number(where: str, value: float | None, field: _Field, *, shown: object) -> Any:
    """``value`` when it is in the field's range; else a ValueError that shows ``shown``."""
    if field.duration:
        expected = f"a duration {'> 0s' if field.positive else '>= 0s'}"
        if isinstance(shown, str) or value is None:  # read from JSON: say how to write it
            expected += ' such as "10s" or "0.5s" (up to 9 decimals)'
        expected += f", at most {MAX_DURATION}s"
        at_least = value is not None and (value > 0 or (value == 0 and not field.positive))
        if value is not None and at_least and value <= MAX_DURATION:
            return float(value)
    else:
        expected = f"an integer {field.lowest}..{field.highest}"
        if value is not None and field.lowest <= value <= field.highest:
            return value
    raise ValueError(f"{where}: expected {expected}, got {shown!r}")


def _check_type(where: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{where}: expected a {kind.__name__} or None, got {value!r}")


def _error(where: str, path: str, expected: str, got: object) -> ValueError:
    return ValueError(f"{where}: {path + ': ' if path else ''}expected {expected}, got {got!r}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
