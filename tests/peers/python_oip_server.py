"""A Python peer for `vigil bench --python-peer`: the Open Inference Protocol's ModelInfer over
grpcio's asyncio server, answered by onnxruntime, as a Python model server (KServe's
ModelServer, a hand-written grpcio service) serves it. One model, FP32 raw contents in and out.

    python python_oip_server.py MODEL_DIR [--listen 127.0.0.1:0]

Prints "python-peer listening on HOST:PORT" once it serves.
"""

import argparse
import asyncio
import pathlib

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2, service_pb2_grpc


class Inference(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, name: str, session: ort.InferenceSession):
        self.name = name
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]

    async def ModelInfer(self, request, context):
        if request.model_name != self.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model_name}")
        feeds = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.datatype != "FP32" or i >= len(request.raw_input_contents):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "FP32 raw contents only")
            feeds[tensor.name] = np.frombuffer(request.raw_input_contents[i], dtype=np.float32).reshape(
                tuple(tensor.shape)
            )
        results = self.session.run(self.outputs, feeds)
        response = service_pb2.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for name, value in zip(self.outputs, results):
            value = np.ascontiguousarray(value, dtype=np.float32)
            response.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
            response.raw_output_contents.append(value.tobytes())
        return response


async def serve(model_dir: pathlib.Path, listen: str) -> None:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(model_dir.parent.name, session), server)
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"python-peer listening on {host}:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=pathlib.Path, help="<repository>/<model>/<version>")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    asyncio.run(serve(args.model_dir, args.listen))
