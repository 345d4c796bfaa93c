"""The pure parts of `./dev bench-instructions` (tests/bench/serving_instructions.py): the model
copy it profiles, the requests it sends and where it files each function's instructions."""

import importlib.util
import pathlib
import sys
import tomllib

from tritonclient.grpc import service_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/bench"))  # the callgrind reader the scripts share
_spec = importlib.util.spec_from_file_location("serving_instructions", ROOT / "tests/bench/serving_instructions.py")
si = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(si)


def test_the_profiled_copy_differs_from_the_shipped_model_only_in_spinning_and_the_inline_limit(tmp_path):
    shipped_dir = ROOT / "models"
    copy = si.profiled_copy(shipped_dir, "scratch-detector", tmp_path)
    shipped = tomllib.loads((shipped_dir / "scratch-detector/1/model.toml").read_text())
    profiled = tomllib.loads((copy / "scratch-detector/1/model.toml").read_text())
    assert profiled.pop("intra_op_spinning") is False
    assert profiled.pop("inline_intra_op_spinning") is False
    assert profiled["dynamic_batching"].pop("inline_run_limit_us") == si.INLINE_RUN_LIMIT_US
    shipped.pop("intra_op_spinning", None)
    shipped.pop("inline_intra_op_spinning", None)
    shipped["dynamic_batching"].pop("inline_run_limit_us", None)
    assert profiled == shipped
    assert (copy / "scratch-detector/1/model.onnx").read_bytes() == (shipped_dir / "scratch-detector/1/model.onnx").read_bytes()


def test_a_model_without_an_inline_session_gets_no_inline_setting_and_loses_its_own(tmp_path):
    model = tmp_path / "in/m/1"
    model.mkdir(parents=True)
    (model / "model.toml").write_text('name = "m"\nintra_op_spinning = true\n[[inputs]]\nname = "x"\n')
    copy = si.profiled_copy(tmp_path / "in", "m", tmp_path / "work")
    profiled = tomllib.loads((copy / "m/1/model.toml").read_text())
    assert profiled == {"name": "m", "intra_op_spinning": False, "inputs": [{"name": "x"}]}


def test_keys_land_in_the_root_table_whatever_the_file_starts_with(tmp_path):
    model = tmp_path / "in/m/1"
    model.mkdir(parents=True)
    (model / "model.toml").write_text('[[inputs]]\nname = "x"\n')
    with_root = tmp_path / "in/m/2"
    with_root.mkdir()
    (with_root / "model.toml").write_text('name = "m"\n  intra_op_spinning = true\ninline_intra_op_threads = 0\n'
                                          'inline_intra_op_spinning = true')
    copy = si.profiled_copy(tmp_path / "in", "m", tmp_path / "work")
    assert tomllib.loads((copy / "m/1/model.toml").read_text()) == {
        "intra_op_spinning": False, "inputs": [{"name": "x"}]}
    assert tomllib.loads((copy / "m/2/model.toml").read_text()) == {
        "name": "m", "inline_intra_op_threads": 0, "intra_op_spinning": False, "inline_intra_op_spinning": False}


def test_an_inline_limit_already_set_is_lifted_and_a_model_without_batching_gets_none(tmp_path):
    model = tmp_path / "in/m/1"
    model.mkdir(parents=True)
    (model / "model.toml").write_text('name = "m"\n[dynamic_batching]  # queue\nmax_queue_delay_us = 500\n'
                                      'inline_run_limit_us = 2000\n[[inputs]]\nname = "x"\n')
    unbatched = tmp_path / "in/m/2"
    unbatched.mkdir()
    (unbatched / "model.toml").write_text('name = "m"\n')
    copy = si.profiled_copy(tmp_path / "in", "m", tmp_path / "work")
    assert tomllib.loads((copy / "m/1/model.toml").read_text()) == {
        "name": "m", "intra_op_spinning": False, "inputs": [{"name": "x"}],
        "dynamic_batching": {"max_queue_delay_us": 500, "inline_run_limit_us": si.INLINE_RUN_LIMIT_US}}
    assert tomllib.loads((copy / "m/2/model.toml").read_text()) == {"name": "m", "intra_op_spinning": False}


def test_a_rewrite_that_would_change_a_value_is_refused(tmp_path):
    model = tmp_path / "in/m/1"
    model.mkdir(parents=True)
    # The setting's line inside a multi-line string: removing it would change the description.
    (model / "model.toml").write_text('description = """\nintra_op_spinning = true\n"""\n')
    try:
        si.profiled_copy(tmp_path / "in", "m", tmp_path / "work")
    except SystemExit as refused:
        assert "cannot change only" in str(refused)
    else:
        raise AssertionError("the rewrite changed the description and was not refused")


def test_the_model_request_carries_one_128x128_image_as_raw_contents():
    body = si.infer_body("scratch-detector")
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    request = service_pb2.ModelInferRequest.FromString(body[5:])
    assert request.model_name == "scratch-detector"
    assert [(i.name, i.datatype, list(i.shape)) for i in request.inputs] == [("image", "FP32", [1, 1, 128, 128])]
    assert [len(raw) for raw in request.raw_input_contents] == [128 * 128 * 4]
    assert si.grpc_frame(b"") == b"\0\0\0\0\0"


def test_functions_are_filed_by_crate_and_object():
    ort = "/x/libonnxruntime.so.1.31.1"
    edge = "/x/vigil-edge"
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert si.category(ort, "0x0000000001342540") == "ONNX Runtime"
    assert si.category(libc, "__memcpy_avx_unaligned_erms") == "memory copies and fills (libc)"
    assert si.category(libc, "__memset_avx2_unaligned_erms") == "memory copies and fills (libc)"
    assert si.category(libc, "malloc") == "libc and libstdc++, the rest"
    assert si.category(edge, "h2::proto::connection::Connection<T,P,B>::poll") == "HTTP/2 (h2, hyper, http)"
    assert si.category(edge, "<hyper::proto::h2::server::Server<T,S,B,E> as core::future::future::Future>::poll") \
        == "HTTP/2 (h2, hyper, http)"
    assert si.category(edge, "tonic::codec::decode::StreamingInner::poll_frame") == "gRPC and protobuf (tonic, prost, tower)"
    assert si.category(edge, "tokio::runtime::scheduler::multi_thread::worker::Context::run") == "tokio and hand-offs"
    assert si.category(edge, "vigil_serving::oip::InferenceService::infer_tallied::{{closure}}") == "Vigil's own code"
    assert si.category(edge, "<vigil_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer<T> "
                             "as tower_service::Service<http::request::Request<B>>>::call") == "Vigil's own code"
    assert si.category(edge, "mi_free") == "allocator (mimalloc)"
    assert si.category(edge, "core::ptr::drop_in_place<tracing::span::Span>") == "other (core, alloc, bytes, std, ...)"
