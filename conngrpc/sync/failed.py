"""Calls of a ``conngrpc.sync`` pool that failed before they started, as grpc's own."""

from __future__ import annotations

from typing import Any

import grpc
from grpc._channel import _InactiveRpcError, _RPCState

__all__ = ["FailedCall", "failed_call"]


class FailedCall(_InactiveRpcError):
    """A call that failed before it started, as grpc's own failed calls answer: a
    ``grpc.RpcError``, ``grpc.Call`` and ``grpc.Future``, whose iteration (a response
    stream's) raises it."""

    def __iter__(self) -> FailedCall:
        return self

    def __next__(self) -> Any:
        raise self


def failed_call(code: grpc.StatusCode, details: str) -> FailedCall:
    """grpc's account of a call that failed with ``code`` before it started."""
    # (an abstract class to the type checker, as grpc's own is: is_active() and two
    # others raise NotImplementedError on grpc's failed calls, and on these)
    return FailedCall(_RPCState((), None, None, code, details))  # type: ignore[abstract]
