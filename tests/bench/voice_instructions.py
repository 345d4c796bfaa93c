"""Voice search's serving overhead in instructions (callgrind), a number that shared cores do not blur.

Two runs of `vigil bench-voice` under valgrind's callgrind, on the same spoken queries:

- direct: the bench's own process, which recognises each query three times directly on the
  loaded models; a profile is written as each segment is padded for recognition, so each
  recognition's instructions (every thread) lie between two profiles (queries of one segment
  each, as the bench's are; the last run also holds the start of the bench's load, which the
  median of three leaves out);
- served: vigil-cloud, started by the bench (`--external`, one stream), under callgrind with a
  profile written before each voice-search call, so each query's server instructions (every
  thread: network, audio measures, recognition, search) are likewise apart.

Prints, per query, the instructions of the direct recognition (median of its runs) and of the
served query, and where the served ones went (ONNX Runtime, libc, the audio measures, gRPC, ...).

    ./dev bench-voice-instructions [--queries N] [--served-seconds S]

Under callgrind a query takes about 20 s; ONNX Runtime runs its AVX2 kernels there (valgrind has
no AVX-512), the same in both runs.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from callgrind_profile import file_under, parse_profile

# The call before which each run writes a profile: one direct recognition, one served query.
DIRECT_MARK = re.compile(r"^vigil_speech::audio::pad$")
SERVED_MARK = re.compile(r"<vigil_cloud::voice_search::VoiceSearchService as .*VoiceSearch>::search$")


def intervals(paths: list[pathlib.Path], mark: re.Pattern) -> list[collections.Counter]:
    """The self costs between consecutive marked profiles: one entry per marked call, the last
    (cut off by the end of the run) dropped. `paths` are one run's profiles in order."""
    found: list[collections.Counter] = []
    current: collections.Counter | None = None
    for path in paths:
        trigger, costs = parse_profile(path.read_text(errors="replace"))
        if current is not None:
            current.update(costs)
        if mark.search(trigger):
            if current is not None:
                found.append(current)
            current = collections.Counter()
    return found


# Where an instruction was spent: the first row whose pattern matches the object ("ob") or the
# function ("fn") names it. The greedy decoding loop is inlined into its caller: the voice search
# handler, or the bench's own loop.
CATEGORIES = [
    ("ob", r"onnxruntime", "ONNX Runtime"),
    ("fn", r"vigil_speech::audio", "audio measures (pitch, loudness)"),
    ("fn", r"vigil_speech|vigil_cloud|vigil::bench_voice", "recognition loop, voice search handler"),
    ("fn", r"tantivy|levenshtein|fst::", "catalog search"),
    ("fn", r"vigil_inference", "batcher and tensors"),
    ("fn", r"tonic|h2::|hyper|prost|http::|tower", "gRPC, HTTP/2, protobuf"),
    ("fn", r"tokio|crossbeam|parking_lot", "tokio and hand-offs"),
    ("fn", r"\bmi_|_mi_|mimalloc", "allocator (mimalloc)"),
    ("ob", r"libc|libstdc\+\+", "libc and libstdc++ (memcpy, malloc: mostly ONNX Runtime's)"),
]
MODEL = CATEGORIES[0][2]


def category(obj: str, fn: str) -> str:
    """Where an instruction was spent, by object and function."""
    return file_under(CATEGORIES, obj, fn, "other")


def profiles(directory: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    """One run's profiles (prefix.PID.N), in the order they were written."""
    found = [p for p in directory.iterdir() if p.name.startswith(prefix + ".") and p.name.count(".") == 2]
    return sorted(found, key=lambda p: int(p.name.rsplit(".", 1)[1]))


def run(args: argparse.Namespace) -> None:
    work = pathlib.Path(tempfile.mkdtemp(prefix="voice-instructions-"))
    queries = work / "queries.txt"
    lines = [l for l in pathlib.Path(args.queries_file).read_text().splitlines() if l.strip() and not l.startswith("#")]
    queries.write_text("\n".join(lines[: args.queries]) + "\n")
    valgrind = shutil.which("valgrind") or sys.exit("valgrind not found: apt-get install valgrind")
    release = pathlib.Path(args.release_dir)
    # The served run: a copy of vigil beside a vigil-cloud that starts the real one under callgrind.
    served = work / "served"
    served.mkdir()
    shutil.copy2(release / "vigil", served / "vigil")
    wrapper = served / "vigil-cloud"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec {valgrind} -q --tool=callgrind --callgrind-out-file={work}/served.%p '
        f'"--dump-before=*VoiceSearch>::search" {release / "vigil-cloud"} "$@"\n'
    )
    wrapper.chmod(0o755)
    bench = ["bench-voice", "--queries", str(queries), "--concurrency", "1"]
    print(f"==> served: vigil-cloud under callgrind, one stream for {args.served_seconds} s", file=sys.stderr)
    subprocess.run([served / "vigil", *bench, "--external", "--duration-s", str(args.served_seconds)],
                   check=True, stdout=subprocess.DEVNULL)
    print("==> direct: the bench's own recognitions under callgrind", file=sys.stderr)
    subprocess.run([valgrind, "-q", "--tool=callgrind", f"--callgrind-out-file={work}/direct.%p",
                    "--dump-before=vigil_speech::audio::pad", release / "vigil", *bench,
                    "--duration-s", "0.1"], check=True, stdout=subprocess.DEVNULL)
    report(work, args.queries)
    shutil.rmtree(work)


def split(costs: collections.Counter) -> tuple[int, int]:
    """Instructions in ONNX Runtime's own code, and all the others."""
    model = sum(c for (obj, fn), c in costs.items() if category(obj, fn) == MODEL)
    return model, sum(costs.values()) - model


def report(work: pathlib.Path, queries: int, runs_per_query: int = 3) -> None:
    runs = intervals(profiles(work, "direct"), DIRECT_MARK)
    # Each query's run with the median total (the runs agree to 0.1%; the last one may be cut).
    direct_costs = []
    for i in range(min(queries, len(runs) // runs_per_query)):
        ranked = sorted(runs[i * runs_per_query:(i + 1) * runs_per_query], key=lambda c: sum(c.values()))
        direct_costs.append(ranked[runs_per_query // 2])
    direct = [split(c) for c in direct_costs]
    served = intervals(profiles(work, "served"), SERVED_MARK)
    print("M instructions per query (every thread). ONNX Runtime: its own code; the rest: everything else,")
    print("libc's memcpy and malloc under ONNX Runtime included.\n")
    print("| query | direct: ONNX Runtime | direct: the rest | served: ONNX Runtime | served: the rest | the rest, served - direct |")
    print("|---:|---:|---:|---:|---:|---:|")
    pairs = []
    for i, costs in enumerate(served[: len(direct)]):
        (d_model, d_rest), (s_model, s_rest) = direct[i], split(costs)
        pairs.append((d_model, d_rest, s_model, s_rest))
        print(f"| {i} | {d_model / 1e6:.1f} | {d_rest / 1e6:.2f} | {s_model / 1e6:.1f} | {s_rest / 1e6:.2f} | {(s_rest - d_rest) / 1e6:+.2f} |")
    if pairs:
        n = len(pairs)
        d_model, d_rest, s_model, s_rest = (sum(p[k] for p in pairs) / n for k in range(4))
        print(f"| mean of {n} | {d_model / 1e6:.1f} | {d_rest / 1e6:.2f} | {s_model / 1e6:.1f} | {s_rest / 1e6:.2f} | {(s_rest - d_rest) / 1e6:+.2f} |")
    def where(runs: list[collections.Counter]) -> collections.Counter:
        found: collections.Counter = collections.Counter()
        for costs in runs:
            for (obj, fn), cost in costs.items():
                found[category(obj, fn)] += cost / len(runs) / 1e6
        return found

    paired = len(pairs)
    direct_where, served_where = where(direct_costs[:paired]), where(served[:paired])
    print(f"\n| where they went, mean of the {paired} queries | direct, M | served, M | served - direct, M |")
    print("|---|---:|---:|---:|")
    for name, cost in served_where.most_common():
        print(f"| {name} | {direct_where[name]:.2f} | {cost:.2f} | {cost - direct_where[name]:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=6, help="spoken queries measured (the first N)")
    parser.add_argument("--queries-file", default="tests/speech/queries.txt")
    parser.add_argument("--served-seconds", type=float, default=180.0,
                        help="how long the served run lasts (about 20 s a query under callgrind)")
    parser.add_argument("--release-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))
    parser.add_argument("--report", help="only print the report of the profiles in this directory")
    args = parser.parse_args()
    if args.report:
        report(pathlib.Path(args.report), args.queries)
    else:
        run(args)


if __name__ == "__main__":
    main()
