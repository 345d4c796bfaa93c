"""The edge server's cost per request in instructions (callgrind), a number that shared cores do not blur.

Starts the `vigil-edge` release binary under valgrind's callgrind on a copy of the shipped model
(its `model.toml` as shipped but for ONNX Runtime's spinning, turned off: a thread that spins for
work between runs would count its loop as instructions; and for `inline_run_limit_us`, lifted: a
run under callgrind takes longer than the limit, and a lone request would leave the inline path
it takes natively for the batching thread), then, for each kind of request, sends a warm-up from h2load (its own process, one HTTP/2
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
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from callgrind_profile import file_under, parse_profile

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
    return file_under(CATEGORIES, obj, fn, "other (core, alloc, bytes, std, ...)")


# Under callgrind a run takes far longer than `inline_run_limit_us` (2 ms by default), so a lone
# request would go to the batching thread where natively it runs inline: the copy lifts the limit.
INLINE_RUN_LIMIT_US = 600_000_000


def profiled_copy(repository: pathlib.Path, model: str, work: pathlib.Path) -> pathlib.Path:
    """A copy of `model`'s folder whose model.toml (each version's) is the same document but for
    ONNX Runtime's spinning, turned off, and the inline run limit, lifted so that lone requests
    take the path they take natively."""
    copy = work / "models"
    if not (repository / model).is_dir():
        sys.exit(f"no model folder {repository / model}: pass --model-repository and --model")
    shutil.copytree(repository / model, copy / model)
    for toml in (copy / model).glob("*/model.toml"):
        original = tomllib.loads(toml.read_text())
        kept = re.sub(r"(?m)^[ \t]*(inline_)?intra_op_spinning[ \t]*=.*(\n|\Z)", "", toml.read_text())
        spinning = {"intra_op_spinning": False}
        if "inline_intra_op_threads" in original:
            spinning["inline_intra_op_spinning"] = False
        expected = {k: v for k, v in original.items() if k not in ("intra_op_spinning", "inline_intra_op_spinning")}
        expected.update(spinning)
        if "dynamic_batching" in original:
            kept = re.sub(r"(?m)^[ \t]*inline_run_limit_us[ \t]*=.*(\n|\Z)", "", kept)
            kept = re.sub(r"(?m)^[ \t]*\[dynamic_batching\][ \t]*(#.*)?$",
                          lambda header: f"{header.group(0)}\ninline_run_limit_us = {INLINE_RUN_LIMIT_US}", kept)
            expected["dynamic_batching"] = {**original["dynamic_batching"], "inline_run_limit_us": INLINE_RUN_LIMIT_US}
        # Keys before the first line of the file belong to the root table, whatever follows.
        toml.write_text("".join(f"{key} = false\n" for key in spinning) + kept)
        if tomllib.loads(toml.read_text()) != expected:
            sys.exit(f"{toml}: cannot change only the spinning and the inline run limit; edit a copy by hand")
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


def h2load(address: str, method: str, body: pathlib.Path, requests: int) -> None:
    """Sends `requests` calls of `body` to `method` from h2load, one stream; fails on any error."""
    out = subprocess.run(
        ["h2load", "-n", str(requests), "-c", "1", "-m", "1", "-H", "content-type: application/grpc",
         "-H", "te: trailers", "-d", str(body), f"http://{address}/{OIP}/{method}"],
        check=True, capture_output=True, text=True, timeout=120 + 10 * requests).stdout
    if f"{requests} succeeded" not in out:
        sys.exit(f"h2load: not every {method} call succeeded:\n{out}")


def wait_listening(server: subprocess.Popen, printed: pathlib.Path, seconds: float) -> str:
    """The address the server prints once it listens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listening = re.search(r"listening on (\S+)", printed.read_text())
        if listening:
            return listening.group(1)
        if server.poll() is not None:
            sys.exit(f"vigil-edge exited with {server.returncode} under valgrind")
        time.sleep(0.5)
    sys.exit(f"vigil-edge did not start listening within {seconds:.0f} s under valgrind")


def check_model_runs(address: str, model: str) -> None:
    """One ModelInfer through tritonclient, which raises on a gRPC error: h2load counts an answer
    that carries a gRPC error (NOT_FOUND, INVALID_ARGUMENT) as a success."""
    client = grpcclient.InferenceServerClient(url=address)
    request = grpcclient.InferInput("image", [1, 1, 128, 128], "FP32")
    request.set_data_from_numpy(np.zeros((1, 1, 128, 128), dtype=np.float32))
    try:
        answer = client.infer(model, [request], client_timeout=300).get_response()
    except InferenceServerException as e:
        sys.exit(f"{model} did not answer a ModelInfer: {e}")
    if not answer.outputs or not answer.raw_output_contents:
        sys.exit(f"{model} answered with no output: {answer}")


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
    repository = profiled_copy(pathlib.Path(args.model_repository), args.model, work)
    printed, log = work / "server.out", work / "server.log"
    with open(printed, "w") as out, open(log, "w") as err:
        server = subprocess.Popen(
            [valgrind, "-q", "--tool=callgrind", f"--callgrind-out-file={work}/profile.%p", str(edge),
             "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--model-repository", str(repository)],
            stdout=out, stderr=err)
    rows = [("ServerLive", "ServerLive", "live", args.requests),
            ("ModelInfer refused (no model run)", "ModelInfer", "refused", args.requests),
            ("ModelInfer", "ModelInfer", "infer", args.model_requests)]
    found = []
    try:
        address = wait_listening(server, printed, 300)
        check_model_runs(address, args.model)
        for row, method, body, requests in rows:
            print(f"==> {row}: {requests} calls under callgrind", file=sys.stderr)
            h2load(address, method, work / f"{body}.grpc", max(3, requests // 10))
            subprocess.run([control, "-z", str(server.pid)], check=True, stdout=subprocess.DEVNULL, timeout=60)
            h2load(address, method, work / f"{body}.grpc", requests)
            before = set(work.glob("profile.*"))
            subprocess.run([control, "-d", str(server.pid)], check=True, stdout=subprocess.DEVNULL, timeout=60)
            dumped = sorted(set(work.glob("profile.*")) - before)
            if len(dumped) != 1:
                sys.exit(f"callgrind wrote {len(dumped)} profiles for {row}, expected one")
            found.append((row, requests, parse_profile(dumped[0].read_text(errors="replace"))[1]))
    except BaseException:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        if tail:
            print("vigil-edge's last words:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    model_run = sum(c for (obj, fn), c in found[-1][2].items() if category(obj, fn) == MODEL) / found[-1][1]
    if model_run < 1e6:
        sys.exit(f"ModelInfer ran {model_run:.0f} instructions of ONNX Runtime per call: the model did not run")
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
    parser.add_argument("--model", default="scratch-detector",
                        help="a model of the repository taking one 1x1x128x128 FP32 input named image")
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
