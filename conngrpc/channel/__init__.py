"""One persistent channel: its config, backoff, connectors and worker state machine."""

from .backoff import Backoff as Backoff
from .backoff import ExponentialBackoff as ExponentialBackoff
from .config import ChannelConfig as ChannelConfig
from .connector import Connector as Connector
from .persistent import Channel as Channel
from .worker import ChannelWorker as ChannelWorker

__all__ = [
    "Backoff",
    "Channel",
    "ChannelConfig",
    "ChannelWorker",
    "Connector",
    "ExponentialBackoff",
]
