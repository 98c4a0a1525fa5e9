"""Reading conngrpc's OpenTelemetry metrics back in tests: the SDK's in-memory reader."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from conngrpc.otel import ConnGRPCInstrumentor


class Metrics:
    """What an in-memory reader collects, queried by instrument name and attributes."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """Every point of the instrument ``name`` as (attributes, point), collected now."""
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(
                            (dict(point.attributes or {}), point)
                            for point in metric.data.data_points
                        )
        return found

    def value(self, name: str, **attributes: Any) -> float:
        """The sum over the points of ``name`` whose attributes include ``attributes``
        (a histogram's point counts its ``count``); 0 when there is none."""
        wanted = {key.replace("_", "."): value for key, value in attributes.items()}
        total = 0.0
        for found, point in self.points(name):
            if wanted.items() <= found.items():
                total += point.count if isinstance(point, HistogramDataPoint) else point.value
        return total

    def attribute_sets(self, name: str) -> list[dict[str, Any]]:
        return [attributes for attributes, _ in self.points(name)]


@contextmanager
def instrumented() -> Iterator[Metrics]:
    """conngrpc instrumented on a fresh meter provider for the block, then uninstrumented."""
    metrics = Metrics()
    instrumentor = ConnGRPCInstrumentor()
    instrumentor.instrument(meter_provider=metrics.provider)
    try:
        yield metrics
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        metrics.provider.shutdown()
