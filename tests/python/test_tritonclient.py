"""The standard Triton client (tritonclient, PyPI) against vigil-edge, unmodified; outputs
checked against onnxruntime (the Python package) on the same preprocessed tensor."""

import pathlib
import queue
import shutil
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from conftest import MODEL, ROOT, model_dir, preprocess, sample_files, start_edge, stop_edge


@pytest.fixture()
def client(edge_server):
    return grpcclient.InferenceServerClient(edge_server)


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")
    meta = client.get_server_metadata()
    assert meta.name == "vigil-edge"
    assert "model_configuration" in meta.extensions


def test_model_metadata_and_config(client, model_config):
    meta = client.get_model_metadata(MODEL)
    assert meta.name == MODEL
    assert meta.platform == "onnxruntime_onnx"
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("image", "FP32", [-1, 1, 128, 128])]
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [("defect_probability", "FP32", [-1, 1])]
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL
    assert config.max_batch_size == model_config["max_batch_size"]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [1, 128, 128]
    assert list(config.output[0].dims) == [1]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = model_config["dynamic_batching"]
    assert config.dynamic_batching.max_queue_delay_microseconds == batching["max_queue_delay_us"]


def test_infer_equals_onnxruntime(client, model_config, onnx_session):
    files = sample_files("normal", "drifted")[:16]
    x = np.concatenate([preprocess(f, model_config) for f in files])
    expected = onnx_session.run(["defect_probability"], {"image": x})[0]
    # One batched request (raw contents, as tritonclient sends them) ...
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("defect_probability")], request_id="batch-1")
    assert result.get_response().id == "batch-1"
    got = result.as_numpy("defect_probability")
    assert got.shape == expected.shape == (16, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # ... and one request per image.
    for i in range(4):
        single = grpcclient.InferInput("image", [1, 1, 128, 128], "FP32")
        single.set_data_from_numpy(x[i : i + 1])
        got = client.infer(MODEL, [single]).as_numpy("defect_probability")
        np.testing.assert_allclose(got, expected[i : i + 1], rtol=0, atol=1e-5)


def test_stream_infer(client, model_config, onnx_session):
    files = sample_files("normal")[:5]
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, f in enumerate(files):
            inp = grpcclient.InferInput("image", [1, 1, 128, 128], "FP32")
            inp.set_data_from_numpy(preprocess(f, model_config))
            client.async_stream_infer(MODEL, [inp], request_id=str(i))
        for i, f in enumerate(files):
            result, error = answers.get(timeout=30)
            assert error is None
            assert result.get_response().id == str(i)
            expected = onnx_session.run(None, {"image": preprocess(f, model_config)})[0]
            np.testing.assert_allclose(result.as_numpy("defect_probability"), expected, rtol=0, atol=1e-5)
    finally:
        client.stop_stream()


def test_statistics_count_requests(client, model_config):
    before = client.get_inference_statistics(MODEL).model_stats[0].inference_stats.success.count
    inp = grpcclient.InferInput("image", [2, 1, 128, 128], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 1, 128, 128), dtype=np.float32))
    client.infer(MODEL, [inp])
    stats = client.get_inference_statistics(MODEL).model_stats[0]
    assert stats.inference_stats.success.count == before + 1
    assert stats.inference_count >= 2


def test_errors_carry_precise_statuses(client):
    bad_shape = grpcclient.InferInput("image", [1, 3, 128, 128], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((1, 3, 128, 128), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [bad_shape])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image': shape [1, 3, 128, 128]" in e.value.message()
    wrong_type = grpcclient.InferInput("image", [1, 1, 128, 128], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 1, 128, 128), dtype=np.float64))
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [wrong_type])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no-such-model")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index_load_and_unload():
    """The repository extension, as tritonclient speaks it, on a private copy of the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        repository = pathlib.Path(tmp) / "models"
        shutil.copytree(ROOT / "models", repository)
        proc, address, log = start_edge(repository)
        try:
            client = grpcclient.InferenceServerClient(address)
            version = model_dir().name
            index = client.get_model_repository_index().models
            assert [(m.name, m.version, m.state) for m in index] == [(MODEL, version, "READY")]

            client.unload_model(MODEL)
            assert not client.is_model_ready(MODEL)
            with pytest.raises(InferenceServerException) as e:
                client.get_model_metadata(MODEL)
            assert e.value.status() == "StatusCode.NOT_FOUND"
            index = client.get_model_repository_index().models
            assert [(m.name, m.state, m.reason) for m in index] == [(MODEL, "UNAVAILABLE", "unloaded")]

            client.load_model(MODEL)
            assert client.is_model_ready(MODEL)
            inp = grpcclient.InferInput("image", [1, 1, 128, 128], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 1, 128, 128), dtype=np.float32))
            assert client.infer(MODEL, [inp]).get_response().model_version == version

            # A model that cannot load is refused with its reason; nothing else changes.
            broken = repository / "broken" / "1"
            broken.mkdir(parents=True)
            (broken / "model.toml").write_text((model_dir() / "model.toml").read_text().replace(MODEL, "broken"))
            (broken / "model.onnx").write_bytes(b"not an onnx model")
            with pytest.raises(InferenceServerException) as e:
                client.load_model("broken")
            assert e.value.status() == "StatusCode.INTERNAL"
            assert "failed to load 'broken'" in e.value.message()
            states = {(m.name, m.state) for m in client.get_model_repository_index().models}
            assert states == {(MODEL, "READY"), ("broken", "UNAVAILABLE")}
            with pytest.raises(InferenceServerException) as e:
                client.load_model("no-such-model")
            assert e.value.status() == "StatusCode.NOT_FOUND"
            assert client.is_model_ready(MODEL)
        finally:
            stop_edge(proc, log)


def test_text_model_bytes_tensors():
    """A scikit-learn text pipeline exported by skl2onnx: tritonclient sends the posts as a BYTES
    tensor (its own length-prefixed encoding) and reads the BYTES labels back; both equal
    onnxruntime's answers."""
    import sys

    sys.path.insert(0, str(ROOT / "training"))
    from vigil_data import posts
    from vigil_train import spam

    with tempfile.TemporaryDirectory() as tmp:
        repository = pathlib.Path(tmp) / "models"
        shutil.copytree(ROOT / "models", repository)
        version = repository / "spam-filter" / "1"
        pipeline, metrics = spam.train(seed=11, variant="good", n=1500)
        spam.export(pipeline, version, 1, "good", metrics)
        texts, _ = posts.generate(24, seed=12)
        texts += ["", "naïve café ☕ win"]
        expected = spam.onnx_outputs(version / "model.onnx", texts)
        proc, address, log = start_edge(repository)
        try:
            client = grpcclient.InferenceServerClient(address)
            meta = client.get_model_metadata("spam-filter")
            assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("text", "BYTES", [-1, 1])]
            inp = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
            inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
            result = client.infer("spam-filter", [inp])
            labels = [v.decode() for v in result.as_numpy("label")]
            assert labels == expected["label"]
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5)
        finally:
            stop_edge(proc, log)
