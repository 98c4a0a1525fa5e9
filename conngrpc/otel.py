"""OpenTelemetry metrics for conngrpc's pools, channels and supervisors (the ``otel`` extra).

Install with ``pip install 'conngrpc[otel]'`` (it adds ``opentelemetry-api`` only), then::

    from conngrpc.otel import ConnGRPCInstrumentor

    ConnGRPCInstrumentor().instrument(meter_provider=provider)  # the global one if omitted
    ...
    ConnGRPCInstrumentor().uninstrument()

It has the shape of opentelemetry-python-contrib's instrumentors (``instrument``,
``uninstrument``, ``instrumentation_dependencies``, one instance per process, a second
``instrument`` ignored) without depending on ``opentelemetry-instrumentation``: it
patches nothing. Counters and the histogram are fed by handlers on the telemetry bus;
the gauges are read from the running pools when the metrics are collected. Every
instrument, its unit and its attributes are listed on the Telemetry page.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, ClassVar

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.util.types import AttributeValue
except ImportError as error:  # pragma: no cover - the extra is installed in tests
    raise ImportError(
        f"conngrpc.otel needs the OpenTelemetry API ({error}); install it with "
        "pip install 'conngrpc[otel]'"
    ) from error

from . import __version__, telemetry
from ._log import get_logger
from .channel.target import parse_target
from .channel.worker import CONNECTED, CONNECTION_FAILED, DISCONNECTED
from .pool.retry import HEDGE, RETRY
from .pool.runtime import BACKEND_EJECTED, PoolStatus, channels, pools, thread_pools
from .supervisor.supervisor import CHILD_RESTARTED

__all__ = ["HANDLER_ID", "ConnGRPCInstrumentor"]

#: The telemetry handler id under which the instrumentor listens while instrumented.
HANDLER_ID = "conngrpc.otel"

#: Bucket bounds of ``conngrpc.channel.connect.duration``, in seconds: a connect on a LAN
#: takes a millisecond or two, one across regions or with TLS tens to hundreds, and none
#: outlasts ``connect_timeout`` (5 s by default).
CONNECT_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_EVENTS = (
    CONNECTED,
    CONNECTION_FAILED,
    DISCONNECTED,
    CHILD_RESTARTED,
    BACKEND_EJECTED,
    RETRY,
    HEDGE,
)
_log = get_logger("conngrpc.otel")

Attributes = dict[str, AttributeValue]


class ConnGRPCInstrumentor:
    """Reports conngrpc's pools as OpenTelemetry metrics; one instance per process.

    ``ConnGRPCInstrumentor()`` always returns the same instance (as contrib's
    instrumentors do), so ``uninstrument`` may be called from anywhere. Instrumenting
    twice is a no-op that logs a warning: nothing is ever counted twice.

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
        ConnGRPCInstrumentor().instrument(meter_provider=provider)
    """

    _instance: ClassVar[ConnGRPCInstrumentor | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _session: _Session | None

    def __new__(cls) -> ConnGRPCInstrumentor:
        with cls._lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._session = None
                cls._instance = instance
            return cls._instance

    def __repr__(self) -> str:
        return f"<ConnGRPCInstrumentor {'on' if self._session else 'off'}>"

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        """Whether :meth:`instrument` is in force (contrib's name for it)."""
        return self._session is not None

    def instrumentation_dependencies(self) -> Collection[str]:
        """What it instruments: the conngrpc it ships with (contrib's dependency check)."""
        return (f"conngrpc == {__version__}",)

    def instrument(self, *, meter_provider: MeterProvider | None = None, **kwargs: Any) -> None:
        """Create conngrpc's instruments on ``meter_provider`` and start reporting.

        Without ``meter_provider``, the global one (``opentelemetry.metrics``) is used,
        even when it is set after this call. Other keywords (contrib's
        ``skip_dep_check``, ``tracer_provider``, ...) are accepted and ignored.
        """
        with self._lock:
            if self._session is not None:
                _log.warning("conngrpc is instrumented already; instrument() ignored")
                return
            session = _Session(meter_provider, self)
            telemetry.attach_many(HANDLER_ID, _EVENTS, session.handle)
            self._session = session

    def uninstrument(self, **kwargs: Any) -> None:
        """Stop reporting: the handlers are detached and the gauges observe nothing more.

        OpenTelemetry cannot delete an instrument, so the instruments stay on the meter
        provider with the values they had; a later :meth:`instrument` on the same
        provider carries on with them.
        """
        with self._lock:
            if self._session is None:
                _log.warning("conngrpc is not instrumented; uninstrument() ignored")
                return
            telemetry.detach(HANDLER_ID)
            self._session = None

    def _observes(self, session: _Session) -> bool:
        """Whether the gauges created by ``session`` should report now.

        True while a session on the same meter provider is in force. The OpenTelemetry
        SDK keeps the callbacks of the first instrument of a name and ignores those of a
        later one, so after uninstrument and instrument on one provider the first
        session's callbacks are the ones that run. (An SDK that kept both would get
        each gauge's points twice, of the same values.)
        """
        current = self._session
        return current is not None and current.provider() is session.provider()


class _Session:
    """The instruments of one :meth:`ConnGRPCInstrumentor.instrument`, and its handler."""

    def __init__(self, provider: MeterProvider | None, owner: ConnGRPCInstrumentor) -> None:
        self._provider = provider
        self._owner = owner
        self._failed_once = False
        meter = metrics.get_meter("conngrpc", __version__, provider)
        self.connects = meter.create_counter(
            "conngrpc.channel.connects",
            unit="{connection}",
            description="Connections made READY (a make-before-break replacement counts).",
        )
        self.failures = meter.create_counter(
            "conngrpc.channel.connection_failures",
            unit="{attempt}",
            description="Connection attempts that failed (refused, timed out, TLS, health).",
        )
        self.disconnects = meter.create_counter(
            "conngrpc.channel.disconnects",
            unit="{connection}",
            description="Connected channels that stopped being usable, by reason.",
        )
        self.connect_duration = meter.create_histogram(
            "conngrpc.channel.connect.duration",
            unit="s",
            description="How long a successful connection attempt took.",
            explicit_bucket_boundaries_advisory=CONNECT_DURATION_BUCKETS,
        )
        self.restarts = meter.create_counter(
            "conngrpc.supervisor.restarts",
            unit="{restart}",
            description="Children a supervisor restarted after they exited.",
        )
        self.ejections = meter.create_counter(
            "conngrpc.pool.backend.ejections",
            unit="{ejection}",
            description="Backends taken out of a pool's pick because their calls failed, "
            "by reason.",
        )
        self.retries = meter.create_counter(
            "conngrpc.pool.call.retries",
            unit="{attempt}",
            description="Attempts a pool sent again after an attempt failed (its service "
            "config's retryPolicy), by method, status code and the backend it went to.",
        )
        self.hedges = meter.create_counter(
            "conngrpc.pool.call.hedges",
            unit="{attempt}",
            description="Attempts a pool sent while earlier ones still ran (its service "
            "config's hedgingPolicy), by method and the backend it went to.",
        )
        meter.create_observable_gauge(
            "conngrpc.pool.backends.ejected",
            callbacks=[self._guarded(_observe_ejected)],
            unit="{backend}",
            description="Backends out of the pool's pick now (their calls failed).",
        )
        meter.create_observable_gauge(
            "conngrpc.pool.channels.connected",
            callbacks=[self._guarded(_observe_connected)],
            unit="{channel}",
            description="Channels handed out now, per backend.",
        )
        meter.create_observable_gauge(
            "conngrpc.pool.channels.expected",
            callbacks=[self._guarded(_observe_expected)],
            unit="{channel}",
            description="Channels the pool should have (its pool_size).",
        )
        meter.create_observable_gauge(
            "conngrpc.pool.calls.in_flight",
            callbacks=[self._guarded(_observe_in_flight)],
            unit="{call}",
            description="Calls in flight through the pool's PooledChannel.",
        )

    def provider(self) -> MeterProvider:
        return self._provider if self._provider is not None else metrics.get_meter_provider()

    def _guarded(
        self, observe: Callable[[PoolStatus], Iterator[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self._owner._observes(self):
                return []
            found: list[Observation] = []
            # Standalone channels are reported as pools of one, under their own names;
            # conngrpc.sync pools as pools.
            for registry in (pools, channels, thread_pools):
                for name in registry.names():
                    try:
                        runtime = registry.get(name)
                        if runtime is not None:  # it stopped meanwhile
                            found.extend(observe(runtime.status()))
                    except Exception as exc:  # one odd pool must not hide the others
                        self._failed(exc, "gauge", name)
            return found

        return callback

    def handle(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        """The telemetry handler: never raises, so the bus never detaches it."""
        try:
            self._record(event, measurements, metadata)
        except Exception as exc:
            self._failed(exc, "event", event)

    def _record(
        self, event: tuple[str, ...], measurements: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> None:
        if event == CHILD_RESTARTED:
            self.restarts.add(1, _supervisor_attributes(metadata))
            return
        attributes = _channel_attributes(metadata)
        if event == CONNECTED:
            self.connects.add(1, attributes)
            self.connect_duration.record(measurements["duration"] / 1e9, attributes)
        elif event == CONNECTION_FAILED:
            attributes["error.type"] = type(measurements.get("error")).__name__
            self.failures.add(1, attributes)
        elif event == DISCONNECTED:
            attributes["reason"] = str(metadata.get("reason"))
            self.disconnects.add(1, attributes)
        elif event == BACKEND_EJECTED:
            attributes["reason"] = str(metadata.get("reason"))
            self.ejections.add(1, attributes)
        elif event in (RETRY, HEDGE):
            service, _, method = str(metadata.get("method")).lstrip("/").partition("/")
            attributes["rpc.service"], attributes["rpc.method"] = service, method
            code = metadata.get("code")
            if code is not None:
                attributes["rpc.grpc.status_code"] = code.value[0]
            (self.retries if event == RETRY else self.hedges).add(1, attributes)

    def _failed(self, exc: Exception, what: str, where: object) -> None:
        """Log the first failure of this session at warning level, later ones at debug."""
        log = _log.debug if self._failed_once else _log.warning
        self._failed_once = True
        log("conngrpc.otel could not record a metric", what=what, at=where, exc_info=exc)


def _observe_expected(status: PoolStatus) -> Iterator[Observation]:
    yield Observation(status.expected_size, {"pool.name": status.name})


def _observe_ejected(status: PoolStatus) -> Iterator[Observation]:
    yield Observation(len(status.ejected), {"pool.name": status.name})


def _observe_in_flight(status: PoolStatus) -> Iterator[Observation]:
    yield Observation(status.in_flight, {"pool.name": status.name})


def _observe_connected(status: PoolStatus) -> Iterator[Observation]:
    """One point per known backend; channels on no known backend (a mocked pool, say),
    or a pool that knows no backend yet, get a point without ``server.address``."""
    placed = 0
    for backend, count in status.backends.items():
        placed += count
        yield Observation(count, {"pool.name": status.name, **_server(backend)})
    if not status.backends or placed < status.current_size:
        yield Observation(status.current_size - placed, {"pool.name": status.name})


def _channel_attributes(metadata: Mapping[str, Any]) -> Attributes:
    attributes: Attributes = {"pool.name": str(metadata.get("pool_name"))}
    backend = metadata.get("backend")
    if isinstance(backend, str):
        attributes.update(_server(backend))
    return attributes


def _supervisor_attributes(metadata: Mapping[str, Any]) -> Attributes:
    """``supervisor.name``, and ``pool.name`` when it is a pool's (named after the pool)."""
    name = str(metadata.get("supervisor"))
    attributes: Attributes = {"supervisor.name": name}
    if name in pools or name in channels or name in thread_pools:
        attributes["pool.name"] = name
    return attributes


@functools.lru_cache(maxsize=1024)
def _server(backend: str) -> Mapping[str, AttributeValue]:
    """``server.address`` and ``server.port`` (OpenTelemetry's semantic conventions)
    of a backend as conngrpc names it: ``ip:port``, ``[ipv6]:port``, ``host:port``, or a
    target that is not spread (``unix:path``, ...), which gives an address only."""
    try:
        target = parse_target(backend, "backend")
    except ValueError:
        return {"server.address": backend}
    if target.host is not None and target.port is not None:
        return {"server.address": target.host, "server.port": target.port}
    if len(target.addresses) == 1:
        return _server(target.addresses[0])
    if target.scheme == "unix":
        path = backend.removeprefix("unix:")
        return {"server.address": "/" + path.lstrip("/") if path.startswith("//") else path}
    return {"server.address": backend}
