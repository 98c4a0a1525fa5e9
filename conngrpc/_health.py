"""grpc.health.v1's messages, built by protobuf from their description (private).

The probe asks ``Health/Check``, the test server answers it, and the health watch
follows ``Health/Watch``: all they need of ``grpc/health/v1/health.proto`` is
``HealthCheckRequest {string service = 1}`` and ``HealthCheckResponse {ServingStatus
status = 1}``. Rather than depend on grpcio-health-checking for its generated code,
this module describes the two messages in a ``FileDescriptorProto`` and lets protobuf
build their classes at import. They live in a descriptor pool of their own, so they
never clash with the generated ``health.proto`` that grpcio-health-checking adds to
protobuf's default pool; both write the same bytes (the tests check it).
"""

from __future__ import annotations

from typing import Protocol, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

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

_PACKAGE = "grpc.health.v1"
_Field = descriptor_pb2.FieldDescriptorProto


def _health_proto() -> descriptor_pb2.FileDescriptorProto:
    """The messages of grpc.health.v1's ``health.proto``, as protoc would describe them."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package=_PACKAGE, syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(
        name="service", number=1, type=_Field.TYPE_STRING, label=_Field.LABEL_OPTIONAL
    )
    response = proto.message_type.add(name="HealthCheckResponse")
    serving_status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
        serving_status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=_Field.TYPE_ENUM,
        type_name=f".{_PACKAGE}.HealthCheckResponse.ServingStatus",
        label=_Field.LABEL_OPTIONAL,
    )
    return proto


class _WithService(Protocol):
    """The field a HealthCheckRequest has, which protobuf's type stubs cannot know."""

    service: str


class _WithStatus(Protocol):
    """The field a HealthCheckResponse has, which protobuf's type stubs cannot know."""

    status: int


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_health_proto())
_HealthCheckRequest = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{_PACKAGE}.HealthCheckRequest")
)
_HealthCheckResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{_PACKAGE}.HealthCheckResponse")
)

#: The ServingStatus numbers and names (a proto3 enum is open: others may arrive).
STATUS_NAMES = {
    value.number: value.name
    for value in _pool.FindEnumTypeByName(f"{_PACKAGE}.HealthCheckResponse.ServingStatus").values
}


def encode_request(service: str = "") -> bytes:
    """A HealthCheckRequest for ``service`` ("" asks about the whole server)."""
    # Fields are set one by one, not passed to the constructor: the type stubs of
    # protobuf's generic Message have not always accepted keyword arguments.
    request = _HealthCheckRequest()
    cast(_WithService, request).service = service
    return request.SerializeToString()


def encode_response(status: int) -> bytes:
    """A HealthCheckResponse carrying ``status`` (any int32: the enum is open).

    :raises ValueError: ``status`` is not an int32.
    """
    response = _HealthCheckResponse()
    cast(_WithStatus, response).status = status
    return response.SerializeToString()


def decode_response(data: bytes) -> int:
    """The status of a HealthCheckResponse (0, UNKNOWN, when absent).

    As protobuf reads it: unknown fields are skipped, the last status wins, and a
    number that is no known ServingStatus is returned as it is.

    :raises ValueError: the bytes are not a HealthCheckResponse.
    """
    try:
        response = _HealthCheckResponse.FromString(data)
    except message.DecodeError as error:
        raise ValueError(
            f"expected a HealthCheckResponse, got {len(data)} bytes protobuf cannot parse: {error}"
        ) from None
    return cast(_WithStatus, response).status
