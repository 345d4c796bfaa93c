"""The edge server's cost per request in instructions (callgrind), a number that shared cores do not blur.

Starts the `vigil-edge` release binary under valgrind's callgrind on a copy of the shipped model
(its `model.toml` as shipped but for ONNX Runtime's spinning, turned off: a thread that spins for
work between runs would count its loop as instructions, and under valgrind's one-thread-at-a-time
scheduling it holds the others up), then, for each kind of request, sends a warm-up from h2load (its own process, one HTTP/2
connection, one stream), zeroes the server's counters, sends the measured requests, and writes a
profile. Each profile is divided by its requests and split by where the instructions went
(ONNX Runtime, memory copies, HTTP/2, gRPC and protobuf, tokio, the allocator, Vigil's own code):

- ServerLive: an empty call, what any gRPC round trip costs;
- ModelInfer refused: the 64 KiB request of the next row sent to a model that does not exist
  (received, decoded, refused with NOT_FOUND: no model run);
- ModelInfer: one 1x1x128x128 FP32 tensor to the scratch detector, as `vigil bench` sends it.

Callgrind counts user-space instructions only: the kernel's share (the socket reads and writes,
the wake-ups; about half of a request's CPU on the development machine in `perf`) is not in
these numbers, and a `rep movsb` copy counts one instruction per byte.

    ./dev bench-instructions [--requests N] [--model-requests N]

Under callgrind a ModelInfer takes about a second (the empty calls some milliseconds).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from tritonclient.grpc import service_pb2

from callgrind_profile import parse_profile

ADDRESS = "127.0.0.1:9000"
OIP = "inference.GRPCInferenceService"

# Where an instruction was spent: the first row whose pattern matches the object ("ob") or the
# function ("fn") names it.
CATEGORIES = [
    ("ob", r"onnxruntime", "ONNX Runtime"),
    ("fn", r"memcpy|memmove|memset", "memory copies and fills (libc)"),
    ("fn", r"^<?(h2|hyper|hyper_util|http|http_body|http_body_util|httparse)::", "HTTP/2 (h2, hyper, http)"),
    ("fn", r"^<?(tonic|tonic_prost|prost|tower|tower_layer|tower_service)::", "gRPC and protobuf (tonic, prost, tower)"),
    ("fn", r"^<?(tokio|tokio_util|crossbeam_channel|crossbeam_utils|parking_lot|futures_util)::", "tokio and hand-offs"),
    ("fn", r"\bmi_|_mi_|mimalloc", "allocator (mimalloc)"),
    ("fn", r"^<?vigil_", "Vigil's own code"),
    ("fn", r"^<?(prometheus_client|tracing|tracing_core)::", "metrics and tracing"),
    ("ob", r"libc|libstdc\+\+", "libc and libstdc++, the rest"),
]
MODEL = CATEGORIES[0][2]


def category(obj: str, fn: str) -> str:
    """Where an instruction was spent, by object and function."""
    for field, pattern, name in CATEGORIES:
        if re.search(pattern, obj if field == "ob" else fn):
            return name
    return "other (core, alloc, bytes, std, ...)"


def without_spinning(repository: pathlib.Path, model: str, work: pathlib.Path) -> pathlib.Path:
    """A copy of `model`'s folder whose model.toml turns ONNX Runtime's spinning off."""
    copy = work / "models"
    shutil.copytree(repository / model, copy / model)
    for toml in (copy / model).glob("*/model.toml"):
        text = re.sub(r"(?m)^(inline_)?intra_op_spinning\s*=.*\n", "", toml.read_text())
        # Top-level keys go before the first [table].
        head, table, rest = text.partition("\n[")
        spinning = "intra_op_spinning = false\n"
        if re.search(r"(?m)^inline_intra_op_threads\s*=", head):
            spinning += "inline_intra_op_spinning = false\n"
        toml.write_text(head + "\n" + spinning + table + rest)
    return copy


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message as it travels: uncompressed flag, big-endian length, the message."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def infer_body(model: str) -> bytes:
    """A ModelInfer request for `model` carrying one 1x1x128x128 FP32 image as raw contents."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 128, 128])
    image = np.random.default_rng(7).random((1, 1, 128, 128), dtype=np.float32)
    request.raw_input_contents.append(image.tobytes())
    return grpc_frame(request.SerializeToString())


def h2load(method: str, body: pathlib.Path, requests: int) -> None:
    """Sends `requests` calls of `body` to `method` from h2load, one stream; fails on any error."""
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "1", "-m", "1", "-H", "content-type: application/grpc",
         "-H", "te: trailers", "-d", str(body), f"http://{ADDRESS}/{OIP}/{method}"],
        check=True, capture_output=True, text=True).stdout
    if f"{requests} succeeded" not in out:
        sys.exit(f"h2load: not every {method} call succeeded:\n{out}")


def wait_listening(server: subprocess.Popen, seconds: float) -> None:
    host, port = ADDRESS.split(":")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"vigil-edge exited with {server.returncode} under valgrind")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"vigil-edge did not listen on {ADDRESS} within {seconds:.0f} s under valgrind")


def measure(args: argparse.Namespace, work: pathlib.Path) -> list[tuple[str, int, collections.Counter]]:
    """Runs the server under callgrind and returns (row, requests, costs) per kind of request."""
    valgrind = shutil.which("valgrind") or sys.exit("valgrind not found: apt-get install valgrind")
    control = shutil.which("callgrind_control") or sys.exit("callgrind_control not found (valgrind's)")
    shutil.which("h2load") or sys.exit("h2load not found: apt-get install nghttp2-client")
    bodies = {"live": grpc_frame(service_pb2.ServerLiveRequest().SerializeToString()),
              "refused": infer_body("no-such-model"), "infer": infer_body(args.model)}
    for name, body in bodies.items():
        (work / f"{name}.grpc").write_bytes(body)
    edge = pathlib.Path(args.release_dir) / "vigil-edge"
    repository = without_spinning(pathlib.Path(args.model_repository), args.model, work)
    server = subprocess.Popen(
        [valgrind, "-q", "--tool=callgrind", f"--callgrind-out-file={work}/edge.%p", str(edge),
         "--listen", ADDRESS, "--metrics-listen", "127.0.0.1:0", "--model-repository", str(repository)],
        stdout=subprocess.DEVNULL, stderr=open(work / "edge.log", "w"))
    rows = [("ServerLive", "ServerLive", "live", args.requests),
            ("ModelInfer refused (no model run)", "ModelInfer", "refused", args.requests),
            ("ModelInfer", "ModelInfer", "infer", args.model_requests)]
    found = []
    try:
        wait_listening(server, 300)
        for row, method, body, requests in rows:
            print(f"==> {row}: {requests} calls under callgrind", file=sys.stderr)
            h2load(method, work / f"{body}.grpc", max(3, requests // 10))
            subprocess.run([control, "-z", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
            h2load(method, work / f"{body}.grpc", requests)
            before = set(work.glob("edge.*"))
            subprocess.run([control, "-d", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
            dumped = sorted(set(work.glob("edge.*")) - before)
            if len(dumped) != 1:
                sys.exit(f"callgrind wrote {len(dumped)} profiles for {row}, expected one")
            found.append((row, requests, parse_profile(dumped[0].read_text(errors="replace"))[1]))
    finally:
        server.terminate()
        server.wait()
    return found


def commit() -> str:
    """The measured commit, as the other benchmarks print it."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    head = run("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+changes" if run("status", "--porcelain", "--untracked-files=no") else "")


def report(found: list[tuple[str, int, collections.Counter]]) -> None:
    print(f"command: {' '.join(sys.argv)}\ncommit: {commit()}\n")
    per_row = []
    for row, requests, costs in found:
        where: collections.Counter = collections.Counter()
        for (obj, fn), cost in costs.items():
            where[category(obj, fn)] += cost / requests / 1e3
        per_row.append((row, where))
    names = [name for name, _ in sum((where for _, where in per_row), collections.Counter()).most_common()]
    names.remove(MODEL)
    print("Thousands of instructions per request in the vigil-edge process (every thread, user space).\n")
    print("| request | all | ONNX Runtime | all but ONNX Runtime | " + " | ".join(names) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(names))
    for (row, where), (_, requests, _) in zip(per_row, found):
        row = f"{row}, {requests} calls"
        total = sum(where.values())
        cells = " | ".join(f"{where[name]:.1f}" for name in names)
        print(f"| {row} | {total:.1f} | {where[MODEL]:.1f} | {total - where[MODEL]:.1f} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="calls measured per floor row")
    parser.add_argument("--model-requests", type=int, default=60, help="ModelInfer calls measured")
    parser.add_argument("--model", default="scratch-detector")
    parser.add_argument("--model-repository", default="models")
    parser.add_argument("--release-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="serving-instructions-"))
    try:
        report(measure(args, work))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
