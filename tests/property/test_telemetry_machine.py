"""A hypothesis state machine over the telemetry bus: attach, detach and execute at random.

Each handler must see exactly the events it is attached to, in order, and a handler
that raises must be detached after its first failure while the others go on.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from conngrpc.telemetry import HANDLER_FAILURE, TelemetryBus
from tests._logs import capture_logs

EVENTS = [("a",), ("a", "b"), ("a", "c"), ("d", "e", "f")]
HANDLER_IDS = ["h1", "h2", "h3", ("tuple", "id")]

events = st.sampled_from(EVENTS)
handler_ids = st.sampled_from(HANDLER_IDS)


class TelemetryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bus = TelemetryBus()
        self.attached: dict[Any, tuple[set[tuple[str, ...]], bool]] = {}
        self.seen: dict[Any, list[tuple[str, ...]]] = {}
        self.expected: dict[Any, list[tuple[str, ...]]] = {}
        self.failures: list[Any] = []
        self.configs: list[tuple[Any, Any]] = []
        self.bus.attach("failures", HANDLER_FAILURE, self._on_failure)

    def _on_failure(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        self.failures.append(metadata["handler_id"])

    def _handler(self, handler_id: Any, raises: bool) -> Any:
        def handle(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
            # An assert here would be swallowed by the bus (it detaches a raising handler):
            # record what came, and let the invariant check it.
            self.configs.append((handler_id, config))
            self.seen.setdefault(handler_id, []).append(event)
            if raises:
                raise RuntimeError(f"{handler_id!r} fails")

        return handle

    @rule(
        handler_id=handler_ids,
        chosen=st.lists(events, min_size=1, max_size=3),
        raises=st.booleans(),
    )
    def attach_many(self, handler_id: Any, chosen: list[Any], raises: bool) -> None:
        handler = self._handler(handler_id, raises)
        if handler_id in self.attached:
            try:
                self.bus.attach_many(handler_id, chosen, handler, {"id": handler_id})
            except ValueError:
                return
            raise AssertionError("attaching a taken id must fail")
        self.bus.attach_many(handler_id, chosen, handler, {"id": handler_id})
        self.attached[handler_id] = (set(chosen), raises)

    @rule(handler_id=handler_ids)
    def detach(self, handler_id: Any) -> None:
        assert self.bus.detach(handler_id) == (handler_id in self.attached)
        self.attached.pop(handler_id, None)

    @rule(event=events, value=st.integers())
    def execute(self, event: tuple[str, ...], value: int) -> None:
        listening = [hid for hid, (evs, _) in self.attached.items() if event in evs]
        with capture_logs() as logs:
            self.bus.execute(event, {"value": value}, {"meta": value})
        failed = [hid for hid in listening if self.attached[hid][1]]
        for hid in listening:
            self.expected.setdefault(hid, []).append(event)
        for hid in failed:
            del self.attached[hid]
        assert [log["handler_id"] for log in logs] == failed
        assert self.failures[len(self.failures) - len(failed) :] == failed

    @invariant()
    def each_handler_got_its_own_config(self) -> None:
        assert all(config == {"id": handler_id} for handler_id, config in self.configs)

    @invariant()
    def each_handler_saw_exactly_its_events(self) -> None:
        assert self.seen == self.expected

    @invariant()
    def listed_handlers_match_the_model(self) -> None:
        listed = {(h.id, h.event) for h in self.bus.list_handlers() if h.id != "failures"}
        modelled = {(hid, ev) for hid, (evs, _) in self.attached.items() for ev in evs}
        assert listed == modelled


TestTelemetryBus = TelemetryMachine.TestCase
TestTelemetryBus.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
