"""One persistent channel: its config, target, backoff, connector and worker state machine."""

from .backoff import Backoff as Backoff
from .backoff import ExponentialBackoff as ExponentialBackoff
from .config import ChannelConfig as ChannelConfig
from .config import Connector as Connector

__all__ = [
    "Backoff",
    "ChannelConfig",
    "Connector",
    "ExponentialBackoff",
]
