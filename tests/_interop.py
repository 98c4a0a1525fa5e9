"""grpc.testing's TestService, as grpc's interop test cases need it, without protoc.

grpc's doc/interop-test-descriptions.md defines the cases and the server's behaviour;
src/proto/grpc/testing/{empty,messages,test}.proto its messages and services. The
subset the cases use is written out here field by field, as FileDescriptorProtos in a
private DescriptorPool, with grpc's own names and field numbers, so what goes on the
wire is what grpc's generated code sends. The stubs and the server's handlers are
made from the services' descriptors, as generated code would be.

:class:`InteropServicer` answers as the descriptions' "Server" sections say (echoed
metadata and status, payloads of the sizes asked, a request's compression checked,
a response compressed when asked). A server cannot see whether a request came
compressed (grpc core decompresses it first), so :class:`MeteredProxy` in front of it
counts the bytes that pass, and the servicer judges by them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests._proxy import FaultProxy

__all__ = [
    "ECHO_INITIAL_KEY",
    "ECHO_TRAILING_KEY",
    "TEST_SERVICE",
    "UNIMPLEMENTED_SERVICE",
    "BoolValue",
    "EchoStatus",
    "Empty",
    "InteropServicer",
    "InteropStub",
    "MeteredProxy",
    "Payload",
    "ResponseParameters",
    "SimpleRequest",
    "SimpleResponse",
    "StreamingInputCallRequest",
    "StreamingInputCallResponse",
    "StreamingOutputCallRequest",
    "StreamingOutputCallResponse",
    "UnimplementedServiceStub",
    "serve",
    "zeros",
]

TEST_SERVICE = "grpc.testing.TestService"
UNIMPLEMENTED_SERVICE = "grpc.testing.UnimplementedService"
#: the client metadata the server echoes: the first as initial metadata, the second
#: (binary) as trailing metadata
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"

# --- the .proto files, field by field ------------------------------------------------------

_Field = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "grpc.testing"


def _scalar(name: str, number: int, kind: int) -> _Field:
    return _Field(name=name, number=number, type=kind, label=_Field.LABEL_OPTIONAL)


def _of_type(name: str, number: int, type_name: str, *, enum: bool = False) -> _Field:
    """A field of a message (or, with ``enum``, an enum) type of this package."""
    return _Field(
        name=name,
        number=number,
        type=_Field.TYPE_ENUM if enum else _Field.TYPE_MESSAGE,
        type_name=f".{_PACKAGE}.{type_name}",
        label=_Field.LABEL_OPTIONAL,
    )


def _repeated(field: _Field) -> _Field:
    field.label = _Field.LABEL_REPEATED
    return field


def _message(name: str, *fields: _Field) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=fields)


def _method(
    name: str, request: str, response: str, *, client: bool = False, server: bool = False
) -> descriptor_pb2.MethodDescriptorProto:
    return descriptor_pb2.MethodDescriptorProto(
        name=name,
        input_type=f".{_PACKAGE}.{request}",
        output_type=f".{_PACKAGE}.{response}",
        client_streaming=client,
        server_streaming=server,
    )


def _file(
    name: str, *, dependency: Iterable[str] = (), **parts: Any
) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(
        name=f"src/proto/grpc/testing/{name}",
        package=_PACKAGE,
        syntax="proto3",
        dependency=dependency,
        **parts,
    )


_INT32, _BOOL = _Field.TYPE_INT32, _Field.TYPE_BOOL
_STRING, _BYTES = _Field.TYPE_STRING, _Field.TYPE_BYTES

_EMPTY_PROTO = _file("empty.proto", message_type=[_message("Empty")])

_MESSAGES_PROTO = _file(
    "messages.proto",
    enum_type=[
        descriptor_pb2.EnumDescriptorProto(
            name="PayloadType",
            value=[descriptor_pb2.EnumValueDescriptorProto(name="COMPRESSABLE", number=0)],
        )
    ],
    message_type=[
        _message("BoolValue", _scalar("value", 1, _BOOL)),
        _message(
            "Payload",
            _of_type("type", 1, "PayloadType", enum=True),
            _scalar("body", 2, _BYTES),
        ),
        _message("EchoStatus", _scalar("code", 1, _INT32), _scalar("message", 2, _STRING)),
        _message(
            "SimpleRequest",
            _of_type("response_type", 1, "PayloadType", enum=True),
            _scalar("response_size", 2, _INT32),
            _of_type("payload", 3, "Payload"),
            _scalar("fill_username", 4, _BOOL),
            _scalar("fill_oauth_scope", 5, _BOOL),
            _of_type("response_compressed", 6, "BoolValue"),
            _of_type("response_status", 7, "EchoStatus"),
            _of_type("expect_compressed", 8, "BoolValue"),
        ),
        _message(
            "SimpleResponse",
            _of_type("payload", 1, "Payload"),
            _scalar("username", 2, _STRING),
            _scalar("oauth_scope", 3, _STRING),
        ),
        _message(
            "StreamingInputCallRequest",
            _of_type("payload", 1, "Payload"),
            _of_type("expect_compressed", 2, "BoolValue"),
        ),
        _message("StreamingInputCallResponse", _scalar("aggregated_payload_size", 1, _INT32)),
        _message(
            "ResponseParameters",
            _scalar("size", 1, _INT32),
            _scalar("interval_us", 2, _INT32),
            _of_type("compressed", 3, "BoolValue"),
        ),
        _message(
            "StreamingOutputCallRequest",
            _of_type("response_type", 1, "PayloadType", enum=True),
            _repeated(_of_type("response_parameters", 2, "ResponseParameters")),
            _of_type("payload", 3, "Payload"),
            _of_type("response_status", 7, "EchoStatus"),
        ),
        _message("StreamingOutputCallResponse", _of_type("payload", 1, "Payload")),
    ],
)

_TEST_PROTO = _file(
    "test.proto",
    dependency=[_EMPTY_PROTO.name, _MESSAGES_PROTO.name],
    service=[
        descriptor_pb2.ServiceDescriptorProto(
            name="TestService",
            method=[
                _method("EmptyCall", "Empty", "Empty"),
                _method("UnaryCall", "SimpleRequest", "SimpleResponse"),
                _method(
                    "StreamingOutputCall",
                    "StreamingOutputCallRequest",
                    "StreamingOutputCallResponse",
                    server=True,
                ),
                _method(
                    "StreamingInputCall",
                    "StreamingInputCallRequest",
                    "StreamingInputCallResponse",
                    client=True,
                ),
                _method(
                    "FullDuplexCall",
                    "StreamingOutputCallRequest",
                    "StreamingOutputCallResponse",
                    client=True,
                    server=True,
                ),
                _method("UnimplementedCall", "Empty", "Empty"),
            ],
        ),
        descriptor_pb2.ServiceDescriptorProto(
            name="UnimplementedService", method=[_method("UnimplementedCall", "Empty", "Empty")]
        ),
    ],
)

_POOL = descriptor_pool.DescriptorPool()
for _proto in (_EMPTY_PROTO, _MESSAGES_PROTO, _TEST_PROTO):
    _POOL.Add(_proto)


def _class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


Empty = _class("Empty")
BoolValue = _class("BoolValue")
Payload = _class("Payload")
EchoStatus = _class("EchoStatus")
SimpleRequest = _class("SimpleRequest")
SimpleResponse = _class("SimpleResponse")
StreamingInputCallRequest = _class("StreamingInputCallRequest")
StreamingInputCallResponse = _class("StreamingInputCallResponse")
ResponseParameters = _class("ResponseParameters")
StreamingOutputCallRequest = _class("StreamingOutputCallRequest")
StreamingOutputCallResponse = _class("StreamingOutputCallResponse")

# --- stubs and handlers, from the services' descriptors --------------------------------------

#: (client streams, server streams): the kind of multicallable, and of handler
_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def _methods(service: str) -> Iterable[tuple[str, Any, Any, Any]]:
    """Each method of ``service``: its name, kinds, request class and response class."""
    for method in _POOL.FindServiceByName(service).methods:
        kinds = _KINDS[method.client_streaming, method.server_streaming]
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        yield method.name, kinds, request, response


class _Stub:
    """A generated stub's equivalent: a multicallable per method of the service."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        for name, (kind, _), _request, response in _methods(service):
            make = getattr(channel, kind)
            callable_ = make(
                f"/{service}/{name}",
                request_serializer=_serialize,
                response_deserializer=response.FromString,
                _registered_method=True,
            )
            setattr(self, name, callable_)


class InteropStub(_Stub):
    """grpc.testing.TestService's stub: EmptyCall, UnaryCall, StreamingOutputCall,
    StreamingInputCall, FullDuplexCall and UnimplementedCall."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, TEST_SERVICE)


class UnimplementedServiceStub(_Stub):
    """grpc.testing.UnimplementedService's stub: UnimplementedCall, which no server has."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel, UNIMPLEMENTED_SERVICE)


# --- the server --------------------------------------------------------------------------

Context = grpc.aio.ServicerContext[Any, Any]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def zeros(size: int) -> Any:
    """A Payload of ``size`` zeros (of type COMPRESSABLE, the only one)."""
    return Payload(body=bytes(size))


class InteropServicer:
    """TestService as the interop descriptions' "Server" sections say.

    ``wire``: the proxy in front of this server that every call comes through, by which
    a request's compression is judged (``expect_compressed``); without one, a request
    that expects compression is refused (FAILED_PRECONDITION). Compression is asked and
    checked of UnaryCall only (the cases the tests run); a streaming request that asks
    for it is refused (UNIMPLEMENTED), not answered as if it had not asked.
    ``unary_calls`` counts the UnaryCalls it answered.
    """

    def __init__(self, wire: FaultProxy | None = None) -> None:
        self.wire = wire
        self.unary_calls = 0
        self._seen = 0  # the bytes that had come through ``wire`` at the last UnaryCall

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of every method this servicer has (not UnimplementedCall)."""
        handlers = {}
        for name, (_, make), request, _response in _methods(TEST_SERVICE):
            behaviour = getattr(self, name, None)
            if behaviour is not None:
                handlers[name] = make(
                    behaviour,
                    request_deserializer=request.FromString,
                    response_serializer=_serialize,
                )
        return grpc.method_handlers_generic_handler(TEST_SERVICE, handlers)

    async def EmptyCall(self, request: Any, context: Context) -> Any:
        return Empty()

    async def UnaryCall(self, request: Any, context: Context) -> Any:
        self.unary_calls += 1
        came_compressed = self._came_compressed(request.payload.body)
        await _begin(context, compressed=request.response_compressed.value)
        await _echo_status(request, context)
        if request.expect_compressed.value:
            if came_compressed is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "expect_compressed: this server has no proxy in front to tell",
                )
            if not came_compressed:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "expected a compressed request"
                )
        return SimpleResponse(payload=zeros(request.response_size))

    async def StreamingInputCall(self, requests: AsyncIterator[Any], context: Context) -> Any:
        size = 0
        async for request in requests:
            if request.expect_compressed.value:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, _UNARY_ONLY)
            size += len(request.payload.body)
        return StreamingInputCallResponse(aggregated_payload_size=size)

    async def StreamingOutputCall(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _begin(context)
        await _echo_status(request, context)
        async for response in _responses(request, context):
            yield response

    async def FullDuplexCall(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        await _begin(context)
        async for request in requests:
            await _echo_status(request, context)
            async for response in _responses(request, context):
                yield response

    def _came_compressed(self, body: bytes) -> bool | None:
        """Whether a request with a payload of ``body`` came compressed: fewer bytes than
        the body came through the wire since the last UnaryCall (the cases' payloads are
        zeros, which gzip shrinks a thousandfold); None without a wire."""
        if self.wire is None:
            return None
        came, self._seen = self.wire.bytes_upstream - self._seen, self.wire.bytes_upstream
        return came < len(body)


_UNARY_ONLY = "compression is asked and checked of UnaryCall only, by this server"


async def _begin(context: Context, *, compressed: bool = False) -> None:
    """Echo the client's ECHO_INITIAL_KEY as initial metadata and ECHO_TRAILING_KEY as
    trailing metadata; with ``compressed``, the responses are compressed (gzip).

    The initial metadata then goes at once: grpc.aio's server compresses a call's
    responses only if set_compression() came before initial metadata it sent itself.
    """
    sent = {key: value for key, value in context.invocation_metadata() or ()}
    initial = [(key, sent[key]) for key in (ECHO_INITIAL_KEY,) if key in sent]
    if compressed:
        context.set_compression(grpc.Compression.Gzip)
    if initial or compressed:
        await context.send_initial_metadata(initial)
    if ECHO_TRAILING_KEY in sent:
        context.set_trailing_metadata(((ECHO_TRAILING_KEY, sent[ECHO_TRAILING_KEY]),))


async def _echo_status(request: Any, context: Context) -> None:
    """End the call with the request's ``response_status``, unless its code is 0 (OK)."""
    status = request.response_status
    if status.code:
        await context.abort(_CODES[status.code], status.message)


async def _responses(request: Any, context: Context) -> AsyncIterator[Any]:
    """A response per ``response_parameters``: after ``interval_us``, of ``size`` zeros."""
    for each in request.response_parameters:
        if each.compressed.value:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, _UNARY_ONLY)
        if each.interval_us:
            await asyncio.sleep(each.interval_us / 1e6)  # the interval the client asked for
        yield StreamingOutputCallResponse(payload=zeros(each.size))


@asynccontextmanager
async def serve(servicer: InteropServicer) -> AsyncIterator[str]:
    """A grpc.aio server of ``servicer`` on 127.0.0.1 for the block; its address."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([servicer.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class MeteredProxy(FaultProxy):
    """A FaultProxy that also counts the bytes it passes on to clients (``bytes_downstream``),
    as it counts those to the server (``bytes_upstream``)."""

    bytes_downstream = 0

    async def _write(self, chunks: Any, sink: Any, to_client: bool) -> None:
        await super()._write(_Counted(self, chunks) if to_client else chunks, sink, to_client)


class _Counted:
    """The chunks on their way to a client, each counted as the proxy takes it."""

    def __init__(self, proxy: MeteredProxy, chunks: Any) -> None:
        self._proxy = proxy
        self._chunks = chunks

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> tuple[float, bytes]:
        due, data = await self._chunks.__anext__()
        self._proxy.bytes_downstream += len(data)
        return due, data
