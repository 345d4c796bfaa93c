"""The callgrind reader behind `./dev bench-voice-instructions` (tests/bench/voice_instructions.py)."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/bench"))  # the callgrind reader the scripts share
_spec = importlib.util.spec_from_file_location("voice_instructions", ROOT / "tests/bench/voice_instructions.py")
vi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vi)

MARK = "<vigil_cloud::voice_search::VoiceSearchService as vigil_proto::vigil::v1::voice_search_server::VoiceSearch>::search"


def profile(trigger: str, body: str) -> str:
    return f"version: 1\ncreator: callgrind-3.19.0\ndesc: Trigger: --dump-before={trigger}\npositions: line\nevents: Ir\n{body}"


# ONNX Runtime spends 70 itself and calls memcpy, which spends 20: the call line's inclusive 20
# must not count twice. Names are given once, then reused by number.
FIRST = """ob=(1) /x/libonnxruntime.so.1.31.1
fl=(1) ???
fn=(1) 0x0000000001357abb
0 30
+2 40
cob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
cfn=(2) __memcpy_avx_unaligned_erms
calls=1 0
0 20
ob=(2)
fl=(2) ???
fn=(2)
0 20
ob=(3) /x/vigil-cloud.real
fl=(3) src/audio.rs
fn=(3) vigil_speech::audio::frame_period
5 7
fi=(4) src/inlined.rs
9 3
"""
SECOND = """ob=(1) /x/libonnxruntime.so.1.31.1
fl=(1) ???
fn=(1) 0x0000000001357abb
0 100
ob=(2) /x/vigil-cloud.real
fl=(2) h2/src/codec.rs
fn=(2) h2::codec::framed_read::decode_frame
1 4
"""


def test_self_costs_leave_out_the_inclusive_cost_of_calls_and_follow_compressed_names():
    trigger, costs = vi.parse_profile(profile(MARK, FIRST))
    assert trigger == MARK
    assert costs == {
        ("/x/libonnxruntime.so.1.31.1", "0x0000000001357abb"): 70,
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "__memcpy_avx_unaligned_erms"): 20,
        ("/x/vigil-cloud.real", "vigil_speech::audio::frame_period"): 10,
    }


def test_each_marked_call_gets_the_costs_up_to_the_next_one(tmp_path):
    # Start-up (before the first mark), two queries, a profile written mid-query by another
    # trigger, and the cut-off tail after the last mark (dropped).
    files = [
        profile(MARK, SECOND),                  # start-up, up to query 0
        profile("other::trigger", FIRST),       # query 0, first part
        profile(MARK, SECOND),                  # query 0, the rest; query 1 starts
        profile(MARK, FIRST),                   # query 1; query 2 starts
        profile("at exit", SECOND),             # query 2, cut off
    ]
    paths = []
    for i, text in enumerate(files, start=1):
        path = tmp_path / f"served.42.{i}"
        path.write_text(text)
        paths.append(path)
    (tmp_path / "served.42").write_text(profile("at exit", SECOND))  # the final profile, no number
    found = vi.intervals(vi.profiles(tmp_path, "served"), vi.SERVED_MARK)
    assert [sum(c.values()) for c in found] == [100 + 104, 100]
    where = {vi.category(obj, fn): cost for (obj, fn), cost in found[0].items()}
    assert where == {
        "ONNX Runtime": 70 + 100,
        "libc and libstdc++ (memcpy, malloc: mostly ONNX Runtime's)": 20,
        "audio measures (pitch, loudness)": 10,
        "gRPC, HTTP/2, protobuf": 4,
    }
