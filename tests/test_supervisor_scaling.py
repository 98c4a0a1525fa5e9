"""Stopping a supervision tree costs work in proportion to its size, not its square.

The bound is on work counted, not on wall-clock time (which a busy machine stretches):
the Python function calls made while the tree stops, counted by cProfile, for n and 4n
children. Linear work grows 4-fold (measured: 3.9 to 4.0), quadratic work 16-fold; a
nested supervisor (the shape of a pool: a supervisor child holding the channels) whose
task group sat inside its parent's cancelled scope grew 12.7-fold from 200 to 800
children on asyncio, as anyio re-delivered the parent's cancellation to every child's
scope on each turn of the event loop while the children stopped one by one.
"""

from __future__ import annotations

import cProfile
import pstats

import anyio
import pytest
from anyio.abc import TaskStatus

from conngrpc import ChildSpec, Supervisor
from conngrpc.supervisor.supervisor import StopOrder

pytestmark = pytest.mark.anyio

N = 200
#: Linear: 4.0; quadratic: 16. Room for fixed costs, and for the counts of a backend
#: that differ from run to run, without letting quadratic growth pass.
MOST_GROWTH_FOR_4N = 6.0


async def _idle(*, task_status: TaskStatus[None]) -> None:
    task_status.started()
    await anyio.sleep_forever()


async def _calls_to_stop(children: int, stop_order: StopOrder) -> int:
    """Python calls made while leaving a supervisor whose one child supervises the rest."""
    nested = Supervisor.child_spec(
        id="nested",
        children=[ChildSpec(index, _idle) for index in range(children)],
        stop_order=stop_order,
    )
    profile = cProfile.Profile()
    async with Supervisor([nested]):
        profile.enable()
    profile.disable()
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("stop_order", ["right_to_left", "all_at_once"])
async def test_stopping_a_nested_supervisor_grows_linearly_with_its_children(
    stop_order: StopOrder,
) -> None:
    await _calls_to_stop(N, stop_order)  # warm-up: first-use costs are not the tree's
    small = await _calls_to_stop(N, stop_order)
    large = await _calls_to_stop(4 * N, stop_order)
    assert large / small <= MOST_GROWTH_FOR_4N, (small, large)
