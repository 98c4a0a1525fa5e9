"""conngrpc's logs go where the application's go, through ``logging``, never to stdout.

The recipes of docs/telemetry.md ("Logs") run in a fresh interpreter each, with a real
pool whose one backend refuses, so conngrpc logs a warning (the first failed attempt).
The rest run here, with structlog's process-wide configuration set as an application
would set it and reset after each test.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing

from conngrpc._log import get_logger
from tests._logs import capture_records
from tests._net import closed_port
from tests._snippets import ROOT, page_snippets

POOL = textwrap.dedent(
    """
    import anyio
    from conngrpc import ExponentialBackoff, Pool, Supervisor, telemetry

    async def main() -> None:
        refused = anyio.Event()
        telemetry.attach("t", ("conngrpc", "channel", "connection_failed"),
                         lambda *_: refused.set())
        spec = Pool.child_spec(name="logged", pool_size=1, channel={
            "address": "127.0.0.1:PORT",
            "backoff": ExponentialBackoff(min=5, max=5),
        })
        async with Supervisor([spec]):
            with anyio.fail_after(30):
                await refused.wait()

    anyio.run(main)
    """
)

FIELDS = {"pool_name": "orders", "channel_name": "orders[0]", "backend": "127.0.0.1:50051"}


def run(prelude: str) -> subprocess.CompletedProcess[str]:
    code = prelude + "\n" + POOL.replace("PORT", str(closed_port()))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )


def recipe(marker: str) -> str:
    (code,) = [s.code for s in page_snippets(ROOT / "docs" / "telemetry.md") if marker in s.code]
    return code


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    """structlog's configuration is process-wide: each test leaves it as it found it."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The records of the ``conngrpc`` loggers, of every level, while the test runs."""
    with capture_records() as seen:
        yield seen


def log_a_failed_attempt() -> None:
    """What a worker logs when its first attempt is refused."""
    log = get_logger("conngrpc.channel").bind(**FIELDS)
    log.warning("channel connection failed", reason="Connection refused")


# --- in a fresh interpreter: nothing configured, and the docs' recipes -------------------


def test_with_nothing_configured_warnings_go_to_stderr_and_nothing_to_stdout() -> None:
    result = run("")
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if "connection failed" in line]
    assert line.startswith("channel connection failed ")
    assert "pool_name=logged" in line
    assert "channel_name=logged[0]" in line
    assert "backend=127.0.0.1:" in line
    assert "Connection refused" in line


def test_the_readme_stdlib_recipe_renders_each_event_once_through_logging() -> None:
    result = run(recipe("logging.basicConfig(level"))
    assert result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if "connection failed" in line]
    # "<date> <time> WARNING conngrpc.channel channel connection failed pool_name=..."
    date, _, level, logger, *message = line.split(" ")
    assert (level, logger) == ("WARNING", "conngrpc.channel")
    assert " ".join(message).startswith("channel connection failed pool_name=logged ")
    assert line.count("WARNING") == 1  # rendered once: no second timestamp or level
    assert line.count(date) == 1


def test_the_readme_structlog_recipe_renders_conngrpc_events_with_their_fields() -> None:
    result = run(recipe("ProcessorFormatter("))
    assert result.stdout == ""
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (failed,) = [e for e in events if e["event"] == "channel connection failed"]
    assert failed["logger"] == "conngrpc.channel"
    assert failed["level"] == "warning"
    assert failed["pool_name"] == "logged"
    assert failed["channel_name"] == "logged[0]"
    assert failed["backend"].startswith("127.0.0.1:")
    assert "Connection refused" in failed["reason"]
    assert failed["timestamp"].endswith("Z")
    assert sum("connection failed" in line for line in result.stderr.splitlines()) == 1


# --- structlog's global configuration is the application's, not conngrpc's ----------------


def test_after_structlog_configure_nothing_of_conngrpc_reaches_stdout(
    capfd: pytest.CaptureFixture[str], records: list[logging.LogRecord]
) -> None:
    structlog.configure(
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    log_a_failed_attempt()
    assert capfd.readouterr().out == ""
    (record,) = records  # it went to logging instead
    assert record.name == "conngrpc.channel"


def test_during_and_after_capture_logs_nothing_of_conngrpc_reaches_stdout(
    capfd: pytest.CaptureFixture[str], records: list[logging.LogRecord]
) -> None:
    with structlog.testing.capture_logs() as captured:
        log_a_failed_attempt()
    log_a_failed_attempt()  # capture_logs leaves structlog "configured", with its defaults
    assert captured == []  # the application's capture is for its own events
    assert capfd.readouterr().out == ""
    assert len(records) == 2


# --- what a record carries ----------------------------------------------------------------


def test_a_record_reads_as_one_line_and_carries_the_fields(
    records: list[logging.LogRecord],
) -> None:
    log_a_failed_attempt()
    (record,) = records
    assert (record.name, record.levelno) == ("conngrpc.channel", logging.WARNING)
    assert record.getMessage() == (
        "channel connection failed pool_name=orders channel_name=orders[0] "
        "backend=127.0.0.1:50051 reason='Connection refused'"
    )
    assert record.conngrpc == {**FIELDS, "reason": "Connection refused"}


def test_an_error_with_exc_info_carries_the_exception_to_logging(
    records: list[logging.LogRecord],
) -> None:
    error = RuntimeError("on_connect raised")
    get_logger("conngrpc.supervisor").error("child crashed", child_id="a", exc_info=error)
    (record,) = records
    assert record.getMessage() == "child crashed child_id=a"
    assert record.exc_info is not None
    assert record.exc_info[1] is error
    assert "RuntimeError: on_connect raised" in logging.Formatter().format(record)


def test_a_processor_formatter_gets_the_bound_fields_as_event_dict_keys() -> None:
    seen: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event_dict))
        return event_dict

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                keep,
                structlog.processors.KeyValueRenderer(key_order=["event"]),
            ],
        )
    )
    library = logging.getLogger("conngrpc")
    library.addHandler(handler)
    try:
        log_a_failed_attempt()
    finally:
        library.removeHandler(handler)
    (event,) = seen
    assert {key: event[key] for key in FIELDS} == FIELDS
    assert event["event"] == "channel connection failed"
    assert event["reason"] == "Connection refused"
    assert (event["level"], event["logger"]) == ("warning", "conngrpc.channel")
    assert event["timestamp"].endswith("Z")
    assert out.getvalue().startswith("event='channel connection failed' pool_name='orders' ")


def test_a_level_logging_filters_out_costs_no_formatting(
    records: list[logging.LogRecord],
) -> None:
    rendered: list[str] = []

    class Field:
        def __str__(self) -> str:
            rendered.append("str")
            return "field"

        def __repr__(self) -> str:
            rendered.append("repr")
            return "Field()"

    logging.getLogger("conngrpc").setLevel(logging.INFO)  # `records` restores it
    log = get_logger("conngrpc.channel").bind(**FIELDS)
    log.debug("channel connected", field=Field())
    assert (rendered, records) == ([], [])
    log.info("channel connected", field=Field())  # a level let through is rendered
    assert rendered == ["str"]
    assert records[0].getMessage().endswith(" field=field")
