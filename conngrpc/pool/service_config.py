"""grpc's service config as a pool reads it (private): pick, ejection, health, retries.

A pool takes the same document a user would give grpc as ``grpc.service_config`` (a
dict or a JSON string) and handles these of its fields itself, across its connections:
``loadBalancingConfig`` (or the legacy ``loadBalancingPolicy``) chooses the pick and
the outlier ejection rules (gRFC A50), ``healthCheckConfig.serviceName`` the
channels' health check (gRFC A17), ``retryThrottling`` and, in each ``methodConfig``
entry, ``retryPolicy``, ``hedgingPolicy``, ``timeout`` and ``waitForReady`` (gRFC A6:
the pool retries and hedges a call over its connections, and a timeout given to each
channel would start again at every attempt). The rest is what each channel gets:
``methodConfig`` without those four fields (an entry left with only its name is
dropped, unless it hides a less specific entry, which grpc applies whole), and anything
else unchanged.

A ``methodConfig`` entry applies to the methods it names, as in grpc: the most specific
entry wins whole (service and method, then service only, then the default entry, whose
name is ``{}``), an entry without names applies to none (its fields are still read), and
a name given twice is an error. Durations grpc reads in whole milliseconds are read so
too (``timeout``, the backoffs: the rest is cut; a ``timeout`` of less than 1 ms is
none, as in grpc), ``retryPolicy.maxAttempts`` (and ``hedgingPolicy``'s) above 5 reads
as 5, and ``retryThrottling.tokenRatio`` is read from its text to 3 decimals, the rest
cut, as grpc core does.

The policy list is read as grpc reads it: the first entry whose policy the pool
supports wins, entries before it that it does not support are skipped (each must still
be an object with one key whose value is an object), entries after it are not read,
and unknown fields in a policy's config are ignored. A JSON ``null`` field reads as an
absent one, as in grpc, except where a policy list belongs and as ``methodConfig``
(which grpc refuses too). Where the pool reads a
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
- ``hedgingPolicy``: grpc core does not read it (it does not hedge), so it lets through
  any value; the pool reads it with A6's rules (``maxAttempts`` 2 or more, above 5 read
  as 5; ``hedgingDelay`` a duration, 0s when absent; ``nonFatalStatusCodes`` read as
  grpc reads ``retryableStatusCodes``, but may be empty), and an entry with both a
  ``retryPolicy`` and a ``hedgingPolicy`` is an error (A6: only one of them), where
  grpc takes the ``retryPolicy``.
- A status code list naming ``OK`` is an error: grpc lets it through, though a call that
  succeeded is never retried.
- ``backoffMultiplier``: grpc reads it as a C ``float`` from a JSON number or any text
  absl's ``SimpleAtof`` reads; the pool takes a finite decimal number (a JSON number or
  a string of one), so not ``"inf"``, ``"nan"``, ``1e309`` or hexadecimal ``"0x10"``.
  Like grpc, it reads a number too small for a C float (``1e-46``) as 0, an error.
- ``tokenRatio``: grpc's reading lets through text such as ``"0.+5"``, ``"1 .5"`` and
  ``"0.123abc"`` (it reads at most 3 characters after the point, each part as an
  integer), and wraps a ratio above 4294967.295 around (``4294968`` reads as 0.704); the
  pool takes digits with an optional point and decimals, and refuses a ratio above that.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeVar, get_args

import grpc

__all__ = [
    "METHOD_FIELDS",
    "POOL_FIELDS",
    "FailurePercentageEjection",
    "HedgingPolicy",
    "MethodPolicy",
    "OutlierDetection",
    "Pick",
    "PoolServiceConfig",
    "RetryPolicy",
    "RetryThrottling",
    "SuccessRateEjection",
    "parse_service_config",
]

#: The document's fields the pool handles itself, whole; each channel gets the rest, with
#: :data:`METHOD_FIELDS` taken out of each ``methodConfig`` entry.
POOL_FIELDS = (
    "loadBalancingConfig",
    "loadBalancingPolicy",
    "healthCheckConfig",
    "retryThrottling",
)
#: The fields of a ``methodConfig`` entry the pool applies itself, across its connections.
METHOD_FIELDS = ("retryPolicy", "hedgingPolicy", "timeout", "waitForReady")

#: grpc reads A50's counts and percentages as uint32.
UINT32_MAX = 2**32 - 1
#: grpc reads retryPolicy's ``maxAttempts`` as an int32.
INT32_MAX = 2**31 - 1
#: The most seconds of a duration grpc reads (protobuf's Duration: 10,000 years).
MAX_DURATION = 315_576_000_000
#: grpc clamps a least_request ``choiceCount`` above this to it.
MAX_CHOICE_COUNT = 10
#: grpc clamps a retryPolicy's ``maxAttempts`` above this to it (A6: hedging's too).
MAX_ATTEMPTS = 5

Pick = Literal["least_loaded", "round_robin", "least_request"]

_POLICIES = ("round_robin", "least_request_experimental", "outlier_detection_experimental")
_CHILD_POLICIES = _POLICIES[:2]
_DURATION = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))?s")
_INTEGER = re.compile(r"\+?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_THOUSANDTHS = re.compile(r"\+?([0-9]+)(?:\.([0-9]+))?")
_BLANKS = " \t\n\v\f\r"  # what grpc's number parsing (absl's SimpleAtoi) skips
#: The largest number a C float reads as 0 (grpc reads backoffMultiplier as one).
_FLOAT_ZERO = 2.0**-150
_STATUS_CODES = {code.name: code for code in grpc.StatusCode}


class _Field(NamedTuple):
    """One field of the document: its JSON name, its attribute, and what it holds."""

    json: str
    attr: str
    highest: int = UINT32_MAX  # an integer lowest..highest
    lowest: int = 0
    # an integer; seconds, written "10s" in JSON; a finite number > 0; a number > 0
    # that grpc reads from its text to 3 decimals; a set of grpc.StatusCode (not OK)
    kind: Literal["integer", "duration", "number", "thousandths", "codes"] = "integer"
    positive: bool = False  # a duration that must be > 0
    millis: bool = False  # a duration grpc reads in whole milliseconds (the rest cut)
    required: bool = False  # grpc refuses the object without it (codes: without one)
    clamped_from: int = 0  # JSON integers up to this are read, above highest as highest


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
_CHOICE_COUNT = _Field(
    "choiceCount", "choice_count", MAX_CHOICE_COUNT, lowest=2, clamped_from=UINT32_MAX
)
_OUTLIER_FIELDS = (
    _Field("interval", "interval", kind="duration", positive=True),
    _Field("baseEjectionTime", "base_ejection_time", kind="duration"),
    _Field("maxEjectionTime", "max_ejection_time", kind="duration"),
    _Field("maxEjectionPercent", "max_ejection_percent", 100),
)
_MAX_ATTEMPTS = _Field(
    "maxAttempts", "max_attempts", MAX_ATTEMPTS, lowest=2, required=True, clamped_from=INT32_MAX
)
_BACKOFF = _Field("", "", kind="duration", positive=True, millis=True, required=True)
_RETRY_FIELDS = (
    _MAX_ATTEMPTS,
    _BACKOFF._replace(json="initialBackoff", attr="initial_backoff"),
    _BACKOFF._replace(json="maxBackoff", attr="max_backoff"),
    _Field("backoffMultiplier", "backoff_multiplier", kind="number", required=True),
    _Field("retryableStatusCodes", "retryable_status_codes", kind="codes", required=True),
)
_HEDGING_FIELDS = (
    _MAX_ATTEMPTS,
    _Field("hedgingDelay", "hedging_delay", kind="duration"),
    _Field("nonFatalStatusCodes", "non_fatal_status_codes", kind="codes"),
)
# grpc reads a timeout of 0 (less than 1 ms) as none: MethodPolicy's is None then
_TIMEOUT = _Field("timeout", "timeout", kind="duration", millis=True)
_THROTTLING_FIELDS = (
    _Field("maxTokens", "max_tokens", lowest=1, required=True),
    _Field("tokenRatio", "token_ratio", kind="thousandths", required=True),
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
        >= 0, all at most 315576000000.999999999 s; ``max_ejection_percent`` 0..100).
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
class RetryPolicy:
    """gRFC A6's ``retryPolicy``: how a call that failed is tried again, durations in seconds.

    A call is tried at most ``max_attempts`` times in all, again only after a status in
    ``retryable_status_codes``; before attempt ``n + 1`` it waits a random time up to
    ``min(initial_backoff * backoff_multiplier ** (n - 1), max_backoff)``.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: a field is out of range (``max_attempts`` 2..5, the backoffs and
        the multiplier > 0, the codes not empty and without OK).
    """

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    backoff_multiplier: float
    retryable_status_codes: frozenset[grpc.StatusCode]

    def __post_init__(self) -> None:
        _check_fields(self, _RETRY_FIELDS)


@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    """gRFC A6's ``hedgingPolicy``: a call sent again without waiting for it to fail.

    Up to ``max_attempts`` attempts in all, one every ``hedging_delay`` seconds (all at
    once for 0) until one succeeds; a status in ``non_fatal_status_codes`` lets the
    others go on, any other status ends the call.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: a field is out of range (``max_attempts`` 2..5, ``hedging_delay``
        >= 0, the codes without OK).
    """

    max_attempts: int
    hedging_delay: float = 0.0
    non_fatal_status_codes: frozenset[grpc.StatusCode] = frozenset()

    def __post_init__(self) -> None:
        _check_fields(self, _HEDGING_FIELDS)


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """One ``methodConfig`` entry, the part the pool applies: None where it says nothing.

    ``timeout``: the call's deadline in seconds, when the call gives none (over all its
    attempts); ``wait_for_ready``: grpc's ``wait_for_ready`` for a call that does not
    say; ``retry`` or ``hedging``: A6's policy for its calls.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: ``timeout`` is not > 0, or both ``retry`` and ``hedging`` are set.
    """

    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None:
            _check_fields(self, (_TIMEOUT._replace(positive=True),))
        _check_type("MethodPolicy.wait_for_ready", self.wait_for_ready, bool)
        _check_type("MethodPolicy.retry", self.retry, RetryPolicy)
        _check_type("MethodPolicy.hedging", self.hedging, HedgingPolicy)
        if self.retry is not None and self.hedging is not None:
            raise ValueError(
                "MethodPolicy.hedging: expected None beside a retry policy (A6: only one "
                f"of retryPolicy or hedgingPolicy), got {self.hedging!r}"
            )


@dataclass(frozen=True, slots=True)
class RetryThrottling:
    """gRFC A6's ``retryThrottling``: retries and hedging stop while calls fail too often.

    A token count starts at ``max_tokens``; a failed call takes 1 away, a successful one
    adds ``token_ratio`` (up to ``max_tokens``); while the count is at most half of
    ``max_tokens``, no call is retried or hedged.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: ``max_tokens`` is not 1..4294967295, ``token_ratio`` not > 0.
    """

    max_tokens: int
    token_ratio: float

    def __post_init__(self) -> None:
        _check_fields(self, _THROTTLING_FIELDS)


@dataclass(frozen=True, slots=True)
class PoolServiceConfig:
    """What a pool takes from a service config document.

    ``pick``: ``least_loaded`` (conngrpc's own, when the document names no policy),
    ``round_robin`` or ``least_request`` (the less loaded of ``choice_count`` picked at
    random). ``outlier_detection``: the user's A50 rules, or None when the document
    names none (the pool's default rules apply). ``health_service``: the service a
    channel's health check asks about (``healthCheckConfig.serviceName``).
    ``methods``: the ``methodConfig`` entries' policies by grpc's method path:
    ``"/pkg.Service/Method"``, ``"/pkg.Service/"`` (the whole service) or ``""`` (the
    default entry); an entry that sets none of :data:`METHOD_FIELDS` is there only, as an
    empty policy, where it hides a less specific one. Read it with
    :meth:`method_policy`. ``retry_throttling``: A6's ``retryThrottling``, or None.
    ``channel_service_config``: the JSON each channel gets, the document without
    :data:`POOL_FIELDS`, its ``methodConfig`` without :data:`METHOD_FIELDS`; None when
    nothing is left.

    :raises TypeError: a field has the wrong type.
    :raises ValueError: ``pick`` is not a known pick, ``choice_count`` not 2..10, a key
        of ``methods`` not a method path.
    """

    pick: Pick = "least_loaded"
    choice_count: int = 2
    outlier_detection: OutlierDetection | None = None
    health_service: str | None = None
    channel_service_config: str | None = None
    methods: Mapping[str, MethodPolicy] = field(default_factory=lambda: MappingProxyType({}))
    retry_throttling: RetryThrottling | None = None

    def __post_init__(self) -> None:
        if self.pick not in get_args(Pick):
            picks = ", ".join(get_args(Pick))
            raise ValueError(f"PoolServiceConfig.pick: expected one of {picks}, got {self.pick!r}")
        _check_fields(self, (_CHOICE_COUNT,))
        _check_type("PoolServiceConfig.outlier_detection", self.outlier_detection, OutlierDetection)
        _check_type("PoolServiceConfig.health_service", self.health_service, str)
        _check_type("PoolServiceConfig.channel_service_config", self.channel_service_config, str)
        _check_type("PoolServiceConfig.retry_throttling", self.retry_throttling, RetryThrottling)
        if not isinstance(self.methods, Mapping):
            raise TypeError(f"PoolServiceConfig.methods: expected a Mapping, got {self.methods!r}")
        for key, policy in self.methods.items():
            if not isinstance(key, str) or not (key == "" or re.fullmatch(r"/.+/.*", key)):
                raise ValueError(
                    'PoolServiceConfig.methods: expected keys such as "/pkg.Service/Method", '
                    f'"/pkg.Service/" or "" (the default), got {key!r}'
                )
            if not isinstance(policy, MethodPolicy):
                raise TypeError(
                    f"PoolServiceConfig.methods[{key!r}]: expected a MethodPolicy, got {policy!r}"
                )
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))

    def method_policy(self, method: str) -> MethodPolicy | None:
        """The methodConfig entry for a call of ``method`` ("/pkg.Service/Method", as grpc
        multicallables take it): the most specific match, as grpc chooses it (service and
        method, then service only, then the default), or None.

        None too where the most specific entry sets none of :data:`METHOD_FIELDS`: grpc
        applies that entry whole, and no less specific one.
        """
        for key in (method, *_less_specific(method)):
            policy = self.methods.get(key)
            if policy is not None:
                return None if policy == _NO_POLICY else policy
        return None


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
    methods, method_config = _method_config(where, document)
    rest = {key: item for key, item in document.items() if key not in POOL_FIELDS}
    if method_config:
        rest["methodConfig"] = method_config  # in its place
    else:
        rest.pop("methodConfig", None)
    return replace(
        picked,
        health_service=_health_service(where, document),
        methods=methods,
        retry_throttling=_json_object(
            where, "", document, "retryThrottling", RetryThrottling, _THROTTLING_FIELDS
        ),
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
            number = _Written(text)
            if not math.isfinite(number):  # each channel would get it as Infinity
                raise ValueError(f"{where}: expected numbers a float holds, got {text}")
            number.text = text
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


class _Written(float):
    """A JSON number read from text, with the text (grpc reads a ``tokenRatio`` from it)."""

    __slots__ = ("text",)
    text: str

    def __repr__(self) -> str:  # a message shows it as written (json.dumps does not ask)
        return self.text


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
        count = _json_value(where, _key(path, "choiceCount"), count, _CHOICE_COUNT)
        return PoolServiceConfig(pick="least_request", choice_count=count)
    outlier = OutlierDetection(
        **_json_fields(where, path, config, _OUTLIER_FIELDS),
        success_rate_ejection=_json_object(
            where, path, config, "successRateEjection", SuccessRateEjection, _SUCCESS_RATE_FIELDS
        ),
        failure_percentage_ejection=_json_object(
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


_Object = TypeVar("_Object")


def _json_object(
    where: str,
    path: str,
    config: dict[str, Any],
    name: str,
    kind: Callable[..., _Object],
    fields: tuple[_Field, ...],
) -> _Object | None:
    """The dataclass an object of the config gives (an A50 rule, an A6 policy), if any."""
    value = config.get(name)
    if value is None:
        return None
    at = _key(path, name)
    if not isinstance(value, dict):
        raise _error(where, at, "an object", value)
    return kind(**_json_fields(where, at, value, fields))


def _method_config(
    where: str, document: dict[str, Any]
) -> tuple[dict[str, MethodPolicy], list[Any]]:
    """The pool's policies by method path, and the methodConfig left for each channel."""
    if "methodConfig" not in document:
        return {}, []
    entries = document["methodConfig"]
    if not isinstance(entries, list):  # null too, as in grpc
        raise _error(where, "methodConfig", "a list of method config objects", entries)
    named: dict[str, str] = {}  # method path: where it is named
    read: list[tuple[list[str], MethodPolicy, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        at = f"methodConfig[{index}]"
        if not isinstance(entry, dict):
            raise _error(where, at, "an object", entry)
        keys = _names(where, at, entry.get("name"), named)
        left = {key: item for key, item in entry.items() if key not in METHOD_FIELDS}
        read.append((keys, _method_policy(where, at, entry), left))
    pool_kept = _kept([(keys, policy != _NO_POLICY) for keys, policy, _ in read])
    channel_kept = _kept([(keys, bool(left.keys() - {"name"})) for keys, _, left in read])
    methods = {
        key: policy
        for (keys, policy, _), kept in zip(read, pool_kept, strict=True)
        if kept
        for key in keys
    }
    return methods, [left for (_, _, left), kept in zip(read, channel_kept, strict=True) if kept]


def _names(where: str, path: str, names: object, named: dict[str, str]) -> list[str]:
    """The method paths an entry's ``name`` list gives, each new to ``named``."""
    if names is None:  # an entry without names applies to no method, as in grpc
        return []
    at = _key(path, "name")
    if not isinstance(names, list):
        raise _error(where, at, 'a list of {"service": ..., "method": ...} objects', names)
    keys = []
    for index, name in enumerate(names):
        here = f"{at}[{index}]"
        if not isinstance(name, dict):
            raise _error(where, here, 'an object {"service": ..., "method": ...}', name)
        service, method = (name.get(part) for part in ("service", "method"))
        for part, value in (("service", service), ("method", method)):
            if value is not None and not isinstance(value, str):
                raise _error(where, _key(here, part), "a str", value)
        if service is None and method is not None:
            raise _error(where, here, "a service beside the method (grpc requires one)", name)
        key = f"/{service}/{method or ''}" if service else ""  # "" for service "", as in grpc
        if key in named:
            said = repr(key) if key else "the default name"
            raise ValueError(
                f"{where}: {here}: expected each method name once in methodConfig, "
                f"got {said} again (as {named[key]})"
            )
        named[key] = here
        keys.append(key)
    return keys


def _method_policy(where: str, path: str, entry: dict[str, Any]) -> MethodPolicy:
    """What the pool applies of a methodConfig entry."""
    if entry.get("retryPolicy") is not None and entry.get("hedgingPolicy") is not None:
        raise ValueError(
            f"{where}: {path}: expected a retryPolicy or a hedgingPolicy (A6: only one of "
            "them), got both"
        )
    wait = entry.get("waitForReady")
    if wait is not None and not isinstance(wait, bool):
        raise _error(where, _key(path, "waitForReady"), "a bool", wait)
    timeout = entry.get("timeout")
    if timeout is not None:  # less than 1 ms: none, as in grpc
        timeout = _json_value(where, _key(path, "timeout"), timeout, _TIMEOUT) or None
    return MethodPolicy(
        timeout=timeout,
        wait_for_ready=wait,
        retry=_json_object(where, path, entry, "retryPolicy", RetryPolicy, _RETRY_FIELDS),
        hedging=_json_object(where, path, entry, "hedgingPolicy", HedgingPolicy, _HEDGING_FIELDS),
    )


def _kept(entries: list[tuple[list[str], bool]]) -> list[bool]:
    """Which methodConfig entries (method paths, whether it sets anything) still matter:
    those that set something, and those that hide, for a method they name, a less
    specific one that does (grpc applies the most specific entry whole)."""
    setting = {key for keys, sets in entries if sets for key in keys}
    return [
        sets or any(less in setting for key in keys for less in _less_specific(key))
        for keys, sets in entries
    ]


def _less_specific(key: str) -> tuple[str, ...]:
    """The method paths grpc falls back to for ``key``: its service's, then the default."""
    if not key:
        return ()
    service = key[: key.rfind("/") + 1]
    return ("",) if service == key else (service, "")


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
    for spec in fields:
        value = config.get(spec.json)
        at = _key(path, spec.json)
        if value is not None:
            read[spec.attr] = _json_value(where, at, value, spec)
        elif spec.required:
            expected = _expected(spec, from_json=True)
            raise ValueError(f"{where}: {at}: expected {expected}, got none (grpc requires it)")
    return read


def _json_value(where: str, path: str, value: object, spec: _Field) -> Any:
    """A field's JSON value read as grpc reads it, or a ValueError naming the path.

    A duration is protobuf's JSON Duration (decimal seconds, up to 9 decimals, then
    ``s``); an integer a JSON integer or a string of one (protobuf's JSON allows both,
    and grpc reads both), never a float, not even 1.0, which grpc refuses too; a number
    a JSON number or a string of one; thousandths a number read from its text, to 3
    decimals; status codes a list of their names.
    """
    number: float | int | None = None
    text = value.strip(_BLANKS) if isinstance(value, str) else None
    numeric = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if spec.kind == "codes":
        return _check_value(
            f"{where}: {path}", _json_codes(where, path, value), spec, shown=value, from_json=True
        )
    if spec.kind == "duration":
        written = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if written is not None and int(written[1]) <= MAX_DURATION:
            nanos = int((written[2] or "").ljust(9, "0"))
            if spec.millis:
                nanos -= nanos % 1_000_000
            number = int(written[1]) + nanos / 1e9
    elif spec.kind == "number":
        if numeric is not None:
            number = float(numeric)
        elif text is not None and _DECIMAL.fullmatch(text):
            number = float(text)
        if number is not None and abs(number) <= _FLOAT_ZERO:  # grpc reads a C float: 0
            number = 0.0
    elif spec.kind == "thousandths":  # grpc reads its text: up to 3 decimals, the rest cut
        if numeric is not None:
            text = getattr(numeric, "text", repr(numeric))
        written = _THOUSANDTHS.fullmatch(text) if text is not None else None
        if written is not None:
            thousandths = int(written[1]) * 1000 + int((written[2] or "")[:3].ljust(3, "0"))
            number = thousandths / 1000 if thousandths <= UINT32_MAX else None
    elif text is not None:
        if _INTEGER.fullmatch(text):
            number = int(text)
    elif isinstance(numeric, int):
        number = numeric
    read = _check_value(f"{where}: {path}", number, spec, shown=value, from_json=True)
    return min(read, spec.highest) if spec.clamped_from else read  # as grpc clamps it


def _json_codes(where: str, path: str, value: object) -> frozenset[grpc.StatusCode] | None:
    """The status codes a JSON list names (grpc reads their names, in capitals)."""
    if not isinstance(value, list):
        return None
    codes = set()
    for index, name in enumerate(value):
        code = _STATUS_CODES.get(name) if isinstance(name, str) else None
        if code is None or code is grpc.StatusCode.OK:
            expected = 'a status code\'s name, in capitals and not OK, such as "UNAVAILABLE"'
            raise _error(where, f"{path}[{index}]", expected, name)
        codes.add(code)
    return frozenset(codes)


def _check_fields(obj: object, fields: tuple[_Field, ...]) -> None:
    """A dataclass's __post_init__: each of its fields of the table checked."""
    for spec in fields:
        where = f"{type(obj).__name__}.{spec.attr}"
        value = getattr(obj, spec.attr)
        if spec.kind == "codes":
            if not isinstance(value, frozenset) or not all(
                isinstance(code, grpc.StatusCode) for code in value
            ):
                raise TypeError(f"{where}: expected a frozenset of grpc.StatusCode, got {value!r}")
        elif isinstance(value, bool) or not isinstance(
            value, int if spec.kind == "integer" else (float, int)
        ):
            kind = {"integer": "an int", "duration": "seconds (an int or a float)"}.get(
                spec.kind, "a number (an int or a float)"
            )
            raise TypeError(f"{where}: expected {kind}, got {value!r}")
        _check_value(where, value, spec, shown=value, from_json=False)


def _check_value(where: str, value: Any, spec: _Field, *, shown: object, from_json: bool) -> Any:
    """``value`` when the field may hold it; else a ValueError that shows ``shown``."""
    if value is not None:
        if spec.kind == "codes":
            if grpc.StatusCode.OK not in value and (value or not spec.required):
                return value
        elif spec.kind == "integer":
            if spec.lowest <= value <= _highest(spec, from_json):
                return value
        elif spec.kind == "duration":
            at_least = value > 0 or (value == 0 and not spec.positive)
            if at_least and value <= MAX_DURATION + 1:  # its seconds at most MAX_DURATION
                return float(value)
        elif value > 0 and math.isfinite(value):
            return float(value)
    raise ValueError(f"{where}: expected {_expected(spec, from_json)}, got {shown!r}")


def _expected(spec: _Field, from_json: bool) -> str:
    """What a field holds, for a message; ``from_json``: as it is written in JSON."""
    if spec.kind == "codes":
        codes = (
            'list of status code names such as ["UNAVAILABLE"]'
            if from_json
            else "frozenset of grpc.StatusCode"
        )
        return f"{'a non-empty' if spec.required else 'a'} {codes}, without OK"
    if spec.kind == "duration":
        bound = "> 0s" if spec.positive else ">= 0s"
        if from_json:
            if spec.positive and spec.millis:
                bound = ">= 0.001s (grpc reads whole milliseconds)"
            bound += ' such as "10s" or "0.5s" (up to 9 decimals)'
        return f"a duration {bound}, at most {MAX_DURATION}.999999999s"
    if spec.kind == "number":
        return "a finite number > 0" + (" (a JSON number or a string of one)" if from_json else "")
    if spec.kind == "thousandths":
        if from_json:  # grpc's reading: up to 3 decimals, and no more than a uint32 of them
            return (
                "a number 0.001..4294967.295 written in digits, with or without a point "
                "(grpc reads 3 decimals and cuts the rest)"
            )
        return "a finite number > 0"
    return f"an integer {spec.lowest}..{_highest(spec, from_json)}"


def _highest(spec: _Field, from_json: bool) -> int:
    """The largest integer a field holds; in JSON, the largest grpc reads (and clamps)."""
    return spec.clamped_from if from_json and spec.clamped_from else spec.highest


def _check_type(where: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{where}: expected a {kind.__name__} or None, got {value!r}")


def _error(where: str, path: str, expected: str, got: object) -> ValueError:
    return ValueError(f"{where}: {path + ': ' if path else ''}expected {expected}, got {got!r}")


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


#: A methodConfig entry that sets nothing the pool applies (made once the checks exist).
_NO_POLICY = MethodPolicy()
