"""A generic, gRPC-free OTP-style supervision tree on anyio (asyncio and trio)."""

from .intensity import RestartIntensity as RestartIntensity
from .registry import Registry as Registry
from .spec import ChildSource as ChildSource
from .spec import ChildSpec as ChildSpec
from .spec import StartFunction as StartFunction
from .spec import to_child_spec as to_child_spec
from .supervisor import ChildCounts as ChildCounts
from .supervisor import ChildInfo as ChildInfo
from .supervisor import Supervisor as Supervisor

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "ChildSource",
    "ChildSpec",
    "Registry",
    "RestartIntensity",
    "StartFunction",
    "Supervisor",
    "to_child_spec",
]
