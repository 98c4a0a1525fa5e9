"""conngrpc's grpc.health.v1 messages agree with grpcio-health-checking's generated ones."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from conngrpc._health import (
    CHECK_METHOD,
    STATUS_NAMES,
    WATCH_METHOD,
    decode_response,
    encode_request,
    encode_response,
)

Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse

#: proto3 enums are open: any int32 may arrive, known to this version or not.
int32s = st.integers(min_value=-(2**31), max_value=2**31 - 1)
unknown_statuses = st.integers(min_value=4, max_value=2**31 - 1)


def _response(status: int) -> bytes:
    return bytes(Response(status=status).SerializeToString())


@pytest.mark.parametrize(
    "first", ["conngrpc._health", "grpc_health.v1.health_pb2"], ids=["ours-first", "theirs-first"]
)
def test_both_health_modules_import_into_one_process_in_either_order(first: str) -> None:
    both = ["conngrpc._health", "grpc_health.v1.health_pb2"]
    second = next(name for name in both if name != first)
    code = f"import {first}, {second}; print('ok')"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_the_method_paths_are_those_of_the_generated_service() -> None:
    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    paths = {name: f"/{service.full_name}/{name}" for name in service.methods_by_name}
    assert (paths["Check"], paths["Watch"]) == (CHECK_METHOD, WATCH_METHOD)


def test_the_status_names_are_those_of_the_proto() -> None:
    names = Response.ServingStatus
    assert {number: names.Name(number) for number in names.values()} == STATUS_NAMES


@given(st.text())
def test_encode_request_matches_the_generated_message(service: str) -> None:
    encoded = encode_request(service)
    assert encoded == Request(service=service).SerializeToString()
    assert Request.FromString(encoded).service == service


def test_encode_request_for_the_whole_server_is_empty() -> None:
    assert encode_request() == b""


@given(int32s)
def test_encode_response_matches_the_generated_message(status: int) -> None:
    assert encode_response(status) == _response(status)


@given(int32s)
def test_decode_response_reads_what_the_generated_message_wrote(status: int) -> None:
    assert decode_response(_response(status)) == status


@pytest.mark.parametrize("status", sorted(STATUS_NAMES), ids=STATUS_NAMES.values())
def test_decode_response_reads_every_known_status(status: int) -> None:
    assert decode_response(_response(status)) == status


@given(unknown_statuses)
def test_decode_response_reads_an_unknown_status(status: int) -> None:
    assert decode_response(_response(status)) == status


def test_decode_response_reads_a_negative_status_as_protobuf_does() -> None:
    assert decode_response(_response(-1)) == Response.FromString(_response(-1)).status == -1


@pytest.mark.parametrize("status", [2**31, -(2**31) - 1], ids=["above", "below"])
def test_encode_response_rejects_a_status_outside_int32(status: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_response(status)


def test_decode_response_of_no_bytes_is_unknown() -> None:
    assert decode_response(b"") == 0


def test_the_last_status_field_wins_as_in_protobuf() -> None:
    data = b"\x08\x01\x08\x02"
    assert decode_response(data) == Response.FromString(data).status == 2


UNKNOWN_FIELDS = [
    pytest.param(b"\x10\x96\x01", id="varint"),
    pytest.param(b"\x19" + bytes(range(8)), id="fixed64"),
    pytest.param(b"\x22\x03abc", id="length-delimited"),
    pytest.param(b"\x2d" + bytes(range(4)), id="fixed32"),
    pytest.param(b"\x1b\x08\x05\x1c", id="group"),
    pytest.param(b"\x22\x02\x08\x01", id="length-delimited-holding-a-status-key"),
]


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS)
def test_decode_response_skips_an_unknown_field_before_the_status(unknown: bytes) -> None:
    data = unknown + _response(2)
    assert decode_response(data) == Response.FromString(data).status == 2


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS)
def test_decode_response_skips_an_unknown_field_after_the_status(unknown: bytes) -> None:
    data = _response(3) + unknown
    assert decode_response(data) == Response.FromString(data).status == 3


MALFORMED = [
    pytest.param(b"\x08", id="key-without-value"),
    pytest.param(b"\x08\x80", id="unfinished-varint"),
    pytest.param(b"\x80", id="unfinished-key"),
    pytest.param(b"\x12\x05ab", id="short-length-delimited"),
    pytest.param(b"\x11\x00\x00", id="short-fixed64"),
    pytest.param(b"\x15\x00", id="short-fixed32"),
    pytest.param(b"\x0e\x00", id="wire-type-6"),
    pytest.param(b"\x0f\x00", id="wire-type-7"),
    pytest.param(b"\x00\x00", id="field-zero"),
    pytest.param(b"\x1b\x08\x05", id="open-group"),
    pytest.param(b"\x0c", id="end-of-a-group-never-opened"),
    pytest.param(b"\x08" + b"\xff" * 10 + b"\x01", id="varint-over-ten-bytes"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_decode_response_rejects_what_protobuf_rejects(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Response.FromString(data)
    with pytest.raises(ValueError, match="expected a HealthCheckResponse, got"):
        decode_response(data)
