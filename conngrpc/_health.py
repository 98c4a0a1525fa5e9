"""grpc.health.v1 on the wire, without the generated code (private).

``HealthCheckRequest {string service = 1}`` and ``HealthCheckResponse {ServingStatus
status = 1}`` are small enough to encode by hand, which keeps grpcio-health-checking
out of the runtime dependencies. The tests check these against the real package.
"""

from __future__ import annotations

__all__ = [
    "CHECK_METHOD",
    "STATUS_NAMES",
    "WATCH_METHOD",
    "decode_response",
    "encode_request",
    "encode_response",
]

CHECK_METHOD = "/grpc.health.v1.Health/Check"
WATCH_METHOD = "/grpc.health.v1.Health/Watch"
_UINT64 = (1 << 64) - 1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_request(service: str = "") -> bytes:
    """A HealthCheckRequest for ``service`` ("" asks about the whole server)."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def encode_response(status: int) -> bytes:
    """A HealthCheckResponse carrying ``status`` (an int32, as protobuf encodes it)."""
    return b"\x08" + _varint(status & _UINT64) if status else b""


def decode_response(data: bytes) -> int:
    """The status of a HealthCheckResponse (0, UNKNOWN, when absent).

    Unknown fields are skipped, as protobuf does; the status is read as an int32.

    :raises ValueError: the bytes are not a HealthCheckResponse.
    """
    status = 0
    position = 0
    while position < len(data):
        field, value, position = _read_field(data, position)
        if field == 1 and value is not None:
            status = _int32(value)
    return status


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _read_field(data: bytes, position: int) -> tuple[int, int | None, int]:
    """One field at ``position``: its number, its value if a varint, and where it ends."""
    key, position = _read_varint(data, position)
    field, wire_type = key >> 3, key & 7
    if field == 0:
        raise ValueError("expected a HealthCheckResponse, got field number 0")
    value: int | None = None
    if wire_type == 0:
        value, position = _read_varint(data, position)
    elif wire_type == 1:
        position += 8
    elif wire_type == 2:
        length, position = _read_varint(data, position)
        position += length
    elif wire_type == 3:  # a (deprecated) group: skip to its end
        while True:
            if position >= len(data):
                raise ValueError("expected a HealthCheckResponse, got an unterminated group")
            inner_key, _ = _read_varint(data, position)
            if inner_key == (field << 3) | 4:
                _, position = _read_varint(data, position)
                break
            _, _, position = _read_field(data, position)
    elif wire_type == 5:
        position += 4
    else:
        raise ValueError(f"expected a HealthCheckResponse, got wire type {wire_type}")
    if position > len(data):
        raise ValueError("expected a HealthCheckResponse, got a truncated message")
    return field, value, position


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("expected a HealthCheckResponse, got a truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
