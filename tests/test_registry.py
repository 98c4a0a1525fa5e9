"""The registry holds a name only while its owner runs, however the owner exits."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from conngrpc import ChildSpec, NameTakenError, Supervisor
from conngrpc.supervisor import Registry
from tests._probe import wait_until

pytestmark = pytest.mark.both_backends


def test_a_registered_name_is_found_synchronously() -> None:
    registry: Registry[str] = Registry("test")
    with registry.register("pool", "handle") as handle:
        assert handle == "handle"
        assert registry.get("pool") == "handle"
        assert "pool" in registry
        assert registry.names() == ["pool"]
    assert registry.get("pool") is None
    assert "pool" not in registry


def test_registering_a_taken_name_is_an_error_naming_it() -> None:
    registry: Registry[str] = Registry("test")
    with registry.register("pool", "first"):
        with (
            pytest.raises(NameTakenError, match="got 'pool', which is already registered"),
            registry.register("pool", "second"),
        ):
            pass
        assert registry.get("pool") == "first"


def test_the_name_is_released_when_the_owner_crashes() -> None:
    registry: Registry[str] = Registry("test")
    with pytest.raises(RuntimeError), registry.register("pool", "handle"):
        raise RuntimeError("owner crashed")
    assert len(registry) == 0


@pytest.mark.anyio
async def test_the_name_is_released_when_the_owner_is_cancelled() -> None:
    registry: Registry[str] = Registry("test")
    with anyio.CancelScope() as scope, registry.register("pool", "handle"):
        scope.cancel()
        await anyio.sleep_forever()
    assert registry.get("pool") is None


@pytest.mark.anyio
async def test_a_supervised_owner_holds_its_name_across_a_restart() -> None:
    registry: Registry[anyio.Event] = Registry("test")

    async def owner(*, task_status: TaskStatus[anyio.Event]) -> None:
        crash = anyio.Event()
        with registry.register("owned", crash):
            task_status.started(crash)
            await crash.wait()
            raise RuntimeError("owner crashed")

    async with Supervisor([ChildSpec("owner", owner)]) as sup:
        first = registry.get("owned")
        assert first is not None
        first.set()
        await wait_until(lambda: registry.get("owned") not in (None, first))
        assert sup.which_children()[0].value is registry.get("owned")
    assert registry.names() == []


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_name_must_be_a_non_empty_string(name: object) -> None:
    registry: Registry[int] = Registry("test")
    with (
        pytest.raises(TypeError, match="expected a non-empty str name"),
        registry.register(name, 1),  # type: ignore[arg-type]
    ):
        pass


def test_registries_are_independent() -> None:
    one: Registry[int] = Registry("one")
    two: Registry[int] = Registry("two")
    with one.register("x", 1), two.register("x", 2):
        assert (one.get("x"), two.get("x")) == (1, 2)
