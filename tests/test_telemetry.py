"""The telemetry bus: attach, detach, execute, span, and isolation of failing handlers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from conngrpc.telemetry import HANDLER_FAILURE, TelemetryBus
from tests._logs import capture_logs

Call = tuple[tuple[str, ...], dict[str, Any], dict[str, Any], Any]


@pytest.fixture
def bus() -> TelemetryBus:
    return TelemetryBus()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        self.calls.append((event, dict(measurements), dict(metadata), config))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_execute_calls_the_handler_with_event_measurements_metadata_and_config(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach("h", ("app", "thing"), recorder, config={"level": 1})
    bus.execute(("app", "thing"), {"duration": 5}, {"who": "me"})
    assert recorder.calls == [(("app", "thing"), {"duration": 5}, {"who": "me"}, {"level": 1})]


def test_execute_without_metadata_passes_an_empty_mapping(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach("h", ("app", "thing"), recorder)
    bus.execute(("app", "thing"), {"count": 1})
    assert recorder.calls == [(("app", "thing"), {"count": 1}, {}, None)]


def test_a_handler_sees_only_the_events_it_is_attached_to(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach("h", ("app", "a"), recorder)
    bus.execute(("app", "b"), {})
    bus.execute(("app",), {})
    bus.execute(("app", "a", "sub"), {})
    assert recorder.calls == []


def test_handlers_run_in_the_order_they_were_attached(bus: TelemetryBus) -> None:
    order: list[str] = []
    for name in "xyz":
        bus.attach(name, ("e",), lambda *_, name=name: order.append(name))
    bus.execute(("e",), {})
    assert order == ["x", "y", "z"]


def test_attach_many_attaches_one_handler_to_several_events(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach_many("h", [("a",), ("b",)], recorder)
    bus.execute(("a",), {})
    bus.execute(("b",), {})
    assert [call[0] for call in recorder.calls] == [("a",), ("b",)]


def test_attaching_a_taken_handler_id_is_an_error(bus: TelemetryBus, recorder: Recorder) -> None:
    bus.attach("h", ("a",), recorder)
    with pytest.raises(ValueError, match="got 'h', which is attached already"):
        bus.attach("h", ("b",), recorder)
    bus.execute(("b",), {})
    assert recorder.calls == []


def test_detach_removes_every_attachment_and_says_whether_it_found_one(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach_many("h", [("a",), ("b",)], recorder)
    assert bus.detach("h") is True
    assert bus.detach("h") is False
    bus.execute(("a",), {})
    bus.execute(("b",), {})
    assert recorder.calls == []
    assert bus.list_handlers() == []


def test_a_failing_handler_is_detached_logged_once_and_reported(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    calls = itertools.count()

    def broken(*_: Any) -> None:
        next(calls)
        raise ZeroDivisionError("handler bug")

    bus.attach("broken", ("e",), broken)
    bus.attach("after", ("e",), recorder)
    failures = Recorder()
    bus.attach("failures", HANDLER_FAILURE, failures)
    with capture_logs() as logs:
        bus.execute(("e",), {"n": 1})  # must not raise
        bus.execute(("e",), {"n": 2})
    assert next(calls) == 1  # it ran once, then was detached
    assert [call[1]["n"] for call in recorder.calls] == [1, 2]  # the next handler still ran
    assert [h.id for h in bus.list_handlers(("e",))] == ["after"]
    assert len(logs) == 1
    assert logs[0]["handler_id"] == "broken"
    assert logs[0]["log_level"] == "error"
    (failure,) = failures.calls
    assert failure[2]["handler_id"] == "broken"
    assert failure[2]["event"] == ("e",)
    assert isinstance(failure[2]["error"], ZeroDivisionError)


def test_span_emits_start_and_stop_with_an_integer_duration(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    bus.attach_many("h", [("op", "start"), ("op", "stop"), ("op", "exception")], recorder)
    with bus.span(("op",), {"id": 7}) as stop_metadata:
        stop_metadata["result"] = "ok"
    start, stop = recorder.calls
    assert start[0] == ("op", "start")
    assert start[2] == {"id": 7}
    assert isinstance(start[1]["monotonic_time"], int)
    assert isinstance(start[1]["system_time"], int)
    assert stop[0] == ("op", "stop")
    assert stop[2] == {"id": 7, "result": "ok"}
    assert isinstance(stop[1]["duration"], int)
    assert stop[1]["duration"] >= 0
    assert stop[1]["monotonic_time"] - stop[1]["duration"] == start[1]["monotonic_time"]


def test_span_emits_exception_and_re_raises(bus: TelemetryBus, recorder: Recorder) -> None:
    bus.attach_many("h", [("op", "stop"), ("op", "exception")], recorder)
    error = KeyError("missing")
    with pytest.raises(KeyError), bus.span(("op",), {"id": 1}):
        raise error
    ((event, measurements, metadata, _),) = recorder.calls
    assert event == ("op", "exception")
    assert isinstance(measurements["duration"], int)
    assert metadata == {"id": 1, "kind": "KeyError", "reason": error}


def test_list_handlers_filters_by_prefix(bus: TelemetryBus, recorder: Recorder) -> None:
    bus.attach("pool", ("conngrpc", "pool", "status"), recorder)
    bus.attach("chan", ("conngrpc", "channel", "connected"), recorder)
    bus.attach("other", ("app", "x"), recorder)
    assert {h.id for h in bus.list_handlers(("conngrpc",))} == {"pool", "chan"}
    assert [h.id for h in bus.list_handlers(("conngrpc", "pool"))] == ["pool"]
    assert len(bus.list_handlers()) == 3
    (info,) = bus.list_handlers(("app",))
    assert (info.event, info.function, info.config) == (("app", "x"), recorder, None)


@pytest.mark.parametrize("event", [(), "conngrpc.pool", ("ok", ""), ("ok", 3), ["a", "b"]])
def test_events_must_be_tuples_of_strings(
    bus: TelemetryBus, recorder: Recorder, event: Any
) -> None:
    with pytest.raises(TypeError, match="non-empty tuple of non-empty strings"):
        bus.attach("h", event, recorder)


def test_attach_many_refuses_a_single_event_in_place_of_a_list(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    with pytest.raises(TypeError, match="use attach"):
        bus.attach_many("h", ("conngrpc", "pool", "status"), recorder)  # type: ignore[arg-type]


def test_a_handler_must_be_callable(bus: TelemetryBus) -> None:
    with pytest.raises(TypeError, match="expected a callable"):
        bus.attach("h", ("e",), "not a function")  # type: ignore[arg-type]
    assert bus.list_handlers() == []


def test_a_switch_is_on_exactly_while_a_handler_listens(
    bus: TelemetryBus, recorder: Recorder
) -> None:
    switch = bus.switch(("e",))
    assert bus.switch(("e",)) is switch
    assert not switch.on
    bus.attach("one", ("e",), recorder)
    bus.attach_many("two", [("e",), ("f",)], recorder)
    assert switch.on
    bus.detach("one")
    assert switch.on
    bus.detach("two")
    assert not switch.on
    bus.attach("late", ("e",), recorder)
    assert bus.switch(("e",)).on
