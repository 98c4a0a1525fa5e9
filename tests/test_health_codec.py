"""The hand-rolled grpc.health.v1 codec agrees with the generated messages."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from conngrpc._health import STATUS_NAMES, decode_response, encode_request, encode_response

Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse

#: proto3 enums are open: any int32 may arrive, known to this version or not.
unknown_statuses = st.integers(min_value=4, max_value=2**31 - 1)
non_negative_statuses = st.integers(min_value=0, max_value=2**31 - 1)


def _response(status: int) -> bytes:
    return bytes(Response(status=status).SerializeToString())


def test_the_status_names_are_those_of_the_proto() -> None:
    names = Response.ServingStatus
    assert {number: names.Name(number) for number in names.values()} == STATUS_NAMES


@given(st.text())
def test_encode_request_matches_the_generated_message(service: str) -> None:
    assert encode_request(service) == Request(service=service).SerializeToString()


def test_encode_request_for_the_whole_server_is_empty() -> None:
    assert encode_request() == b""


@pytest.mark.parametrize("status", sorted(STATUS_NAMES), ids=STATUS_NAMES.values())
def test_decode_response_reads_every_known_status(status: int) -> None:
    assert decode_response(_response(status)) == status


@given(unknown_statuses)
def test_decode_response_reads_an_unknown_status(status: int) -> None:
    assert decode_response(_response(status)) == status


def test_decode_response_reads_a_negative_status_as_protobuf_does() -> None:
    assert decode_response(_response(-1)) == Response.FromString(_response(-1)).status == -1


@pytest.mark.parametrize("status", sorted(STATUS_NAMES), ids=STATUS_NAMES.values())
def test_encode_response_parses_back_to_every_known_status(status: int) -> None:
    assert Response.FromString(encode_response(status)).status == status


@given(non_negative_statuses)
def test_encode_response_parses_back_to_any_status(status: int) -> None:
    assert Response.FromString(encode_response(status)).status == status


@given(non_negative_statuses)
def test_encode_response_matches_the_generated_message(status: int) -> None:
    assert encode_response(status) == _response(status)


def test_decode_response_of_no_bytes_is_unknown() -> None:
    assert decode_response(b"") == 0


def test_the_last_status_field_wins_as_in_protobuf() -> None:
    data = b"\x08\x01\x08\x02"
    assert decode_response(data) == Response.FromString(data).status == 2


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x08", id="key-without-value"),
        pytest.param(b"\x08\x80", id="unfinished-varint"),
        pytest.param(b"\x80", id="unfinished-key"),
        pytest.param(b"\x12\x05ab", id="short-length-delimited"),
        pytest.param(b"\x11\x00\x00", id="short-fixed64"),
        pytest.param(b"\x15\x00", id="short-fixed32"),
    ],
)
def test_decode_response_rejects_truncated_input(data: bytes) -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_response(data)


@pytest.mark.parametrize("data", [b"\x0e\x00", b"\x0f\x00"], ids=["wire-type-6", "wire-type-7"])
def test_decode_response_rejects_an_invalid_wire_type(data: bytes) -> None:
    with pytest.raises(ValueError, match="wire type"):
        decode_response(data)


UNKNOWN_FIELDS = [
    pytest.param(b"\x10\x96\x01", id="varint"),
    pytest.param(b"\x19" + bytes(range(8)), id="fixed64"),
    pytest.param(b"\x22\x03abc", id="length-delimited"),
    pytest.param(b"\x2d" + bytes(range(4)), id="fixed32"),
]


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS)
def test_decode_response_skips_an_unknown_field_before_the_status(unknown: bytes) -> None:
    data = unknown + _response(2)
    assert decode_response(data) == Response.FromString(data).status == 2


@pytest.mark.parametrize("unknown", UNKNOWN_FIELDS)
def test_decode_response_skips_an_unknown_field_after_the_status(unknown: bytes) -> None:
    data = _response(3) + unknown
    assert decode_response(data) == Response.FromString(data).status == 3


def test_decode_response_skips_a_length_delimited_field_holding_a_status_key() -> None:
    data = b"\x22\x02\x08\x01" + _response(2)
    assert decode_response(data) == Response.FromString(data).status == 2


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_any_int32_status_round_trips_like_the_generated_message(status: int) -> None:
    assert encode_response(status) == _response(status)
    assert decode_response(encode_response(status)) == status


def test_decode_response_skips_a_group_as_protobuf_does() -> None:
    data = b"\x1b\x08\x05\x1c" + b"\x08\x01"  # group 3 holding a varint, then status 1
    assert decode_response(data) == Response.FromString(data).status == 1


@pytest.mark.parametrize("data", [b"\x00\x00", b"\x1b\x08\x05"], ids=["field zero", "open group"])
def test_decode_response_rejects_what_protobuf_rejects(data: bytes) -> None:
    with pytest.raises(ValueError, match="expected a HealthCheckResponse"):
        decode_response(data)
