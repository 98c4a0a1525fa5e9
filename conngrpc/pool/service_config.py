"""grpc's service config as a pool reads it (placeholder: the parser lands next)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FailurePercentageEjection",
    "OutlierDetection",
    "Pick",
    "PoolServiceConfig",
    "SuccessRateEjection",
]


@dataclass(frozen=True, slots=True)
class SuccessRateEjection:
    stdev_factor: int = 1900
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100


@dataclass(frozen=True, slots=True)
class FailurePercentageEjection:
    threshold: int = 85
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate_ejection: SuccessRateEjection | None = None
    failure_percentage_ejection: FailurePercentageEjection | None = None


Pick = Literal["least_loaded", "round_robin", "least_request"]


@dataclass(frozen=True, slots=True)
class PoolServiceConfig:
    pick: Pick = "least_loaded"
    choice_count: int = 2
    outlier_detection: OutlierDetection | None = None
    health_service: str | None = None
    channel_service_config: str | None = None


def parse_service_config(value: object, where: str = "Pool service_config") -> PoolServiceConfig:
    raise NotImplementedError(where)
