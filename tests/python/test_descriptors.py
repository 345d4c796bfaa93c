"""The OIP v2 contracts vigil-edge serves, read through its gRPC reflection, compared field by
field with the descriptors the tritonclient package was generated from: every message and field
the server declares exists in Triton's with the same number, type, label and message type, and
the calls perf_analyzer needs are there with the same request and response types."""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

# The v1 and v1alpha reflection messages are identical on the wire; vigil-edge serves v1.
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

# The calls perf_analyzer and tritonclient's basics use, and the messages whose every field must match.
REQUIRED_METHODS = ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer"]
COMPLETE_MESSAGES = [
    "ModelInferRequest",
    "ModelInferResponse",
    "InferTensorContents",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ServerMetadataResponse",
    "ModelConfigRequest",
    "ModelConfigResponse",
]


def server_files(address: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            REFLECTION_V1,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        symbols = ["inference.GRPCInferenceService", "inference.ModelConfig"]
        requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols]
        responses = list(call(iter(requests), timeout=10))
    assert len(responses) == len(symbols)
    files = {}
    for response in responses:
        assert response.WhichOneof("message_response") == "file_descriptor_response", response
        for raw in response.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[fd.name] = fd
    return files


def triton_file(module) -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fd)
    return fd


def messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message, nested ones included, by its full name."""
    out = {}

    def walk(prefix, types):
        for m in types:
            name = f"{prefix}.{m.name}"
            out[name] = m
            walk(name, m.nested_type)

    walk(fd.package, fd.message_type)
    return out


def fields(m: descriptor_pb2.DescriptorProto) -> dict[str, tuple]:
    oneofs = [o.name for o in m.oneof_decl]
    return {
        f.name: (f.number, f.type, f.label, f.type_name, oneofs[f.oneof_index] if f.HasField("oneof_index") else None)
        for f in m.field
    }


@pytest.fixture(scope="module")
def served(edge_server):
    files = server_files(edge_server)
    by_package = {}
    for fd in files.values():
        if fd.package == "inference":
            by_package.update(messages(fd))
    return files, by_package


def test_every_served_message_and_field_matches_triton(served):
    _, server_messages = served
    triton = {**messages(triton_file(service_pb2)), **messages(triton_file(model_config_pb2))}
    assert len(server_messages) > 70, sorted(server_messages)
    compared = 0
    for name, message in server_messages.items():
        assert name in triton, f"{name} is not a Triton message"
        ours, theirs = fields(message), fields(triton[name])
        for field, shape in ours.items():
            assert field in theirs, f"{name}.{field} is not in Triton's {name}"
            assert shape == theirs[field], f"{name}.{field}: ours {shape}, Triton's {theirs[field]}"
            compared += 1
        short = name.removeprefix("inference.")
        if short in COMPLETE_MESSAGES:
            assert set(ours) == set(theirs), f"{name}: missing {sorted(set(theirs) - set(ours))}"
    assert compared > 200, compared


def test_the_service_offers_the_calls_clients_need_with_triton_types(served):
    files, _ = served
    [service] = [s for fd in files.values() if fd.package == "inference" for s in fd.service if s.name == "GRPCInferenceService"]
    ours = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in service.method}
    [triton_service] = triton_file(service_pb2).service
    theirs = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in triton_service.method}
    for method in REQUIRED_METHODS:
        assert method in ours, f"{method} is not served"
    for method, shape in ours.items():
        assert theirs.get(method) == shape, f"{method}: ours {shape}, Triton's {theirs.get(method)}"
