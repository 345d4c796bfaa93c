"""Small data, one epoch, into a temp dir: every artefact is written and the ONNX export
matches PyTorch."""

import json
import time
import tomllib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from vigil_train.pipeline import SMOKE, Config, run

    out = tmp_path_factory.mktemp("model")
    samples = tmp_path_factory.mktemp("samples")
    cfg = Config(**SMOKE)
    t = time.perf_counter()
    metrics = run(cfg, out, samples, gate=False)
    print(f"\nsmoke pipeline: {time.perf_counter() - t:.1f}s")
    return out, samples, metrics


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False exporter, on purpose
def test_the_written_model_is_the_one_trained_and_evaluated(smoke_run):
    import onnxruntime as ort

    from vigil_data import generate, to_model_input

    out, _, metrics = smoke_run
    assert metrics["export"]["max_abs_diff_vs_pytorch"] <= 1e-5
    # Independent check of the trained artefact itself: the test sets made again from their
    # seeds, scored by onnxruntime with the written model.onnx, give exactly the confusion
    # counts that metrics.json reports at the model.toml threshold, and its ROC AUC agrees with
    # scipy's Mann-Whitney U. A random or stale network would miss by far.
    from scipy.stats import mannwhitneyu

    from vigil_data import Conditions
    from vigil_train.pipeline import SMOKE, Config

    cfg = Config(**SMOKE)
    threshold = tomllib.loads((out / "model.toml").read_text())["thresholds"]["defect"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for name in ("normal", "drifted"):
        images, labels, _ = generate(cfg.n_test, cfg.seeds()["test"], Conditions.preset(name))
        scores = sess.run(["defect_probability"], {"image": to_model_input(images)})[0][:, 0].astype(np.float64)
        y = labels.astype(bool)
        pred = scores >= threshold
        counts = {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()), "tn": int((~pred & ~y).sum()), "fn": int((~pred & y).sum())}
        reported = metrics["results"][name]
        assert counts == {k: reported[k] for k in counts}, (name, counts, reported)
        auc = mannwhitneyu(scores[y], scores[~y]).statistic / (y.sum() * (~y).sum())
        assert abs(auc - reported["roc_auc"]) <= 1e-9, (name, auc, reported["roc_auc"])
    x = to_model_input(generate(16, seed=1)[0])
    # And the shipped-style artefact takes any batch size.
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "image" and inp.shape[1:] == [1, 128, 128]
    assert sess.get_outputs()[0].name == "defect_probability"
    for n in (1, 5):
        y = sess.run(None, {"image": x[:n]})[0]
        assert y.shape == (n, 1) and np.all((y >= 0) & (y <= 1))


def test_model_toml(smoke_run):
    out, _, _ = smoke_run
    cfg = tomllib.loads((out / "model.toml").read_text())
    assert set(cfg) == {"name", "version", "platform", "description", "max_batch_size", "labels",
                        "intra_op_threads", "inline_intra_op_threads", "inputs", "outputs", "preprocess",
                        "thresholds", "dynamic_batching"}
    assert cfg["intra_op_threads"] == 1 and cfg["inline_intra_op_threads"] == 0
    assert cfg["name"] == "scratch-detector" and cfg["version"] == 1 and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["labels"] == ["ok", "defect"] and cfg["max_batch_size"] == 64
    assert cfg["inputs"] == [{"name": "image", "datatype": "FP32", "dims": [1, 128, 128]}]
    assert cfg["outputs"] == [{"name": "defect_probability", "datatype": "FP32", "dims": [1]}]
    assert cfg["preprocess"] == {"kind": "image", "width": 128, "height": 128, "channels": "gray",
                                 "resize": "bilinear", "mean": 0.5, "std": 0.5, "layout": "NCHW"}
    t = cfg["thresholds"]
    assert set(t) == {"defect", "accept_below", "reject_at"}
    assert 0 <= t["accept_below"] <= t["defect"] <= t["reject_at"] <= 1
    assert cfg["dynamic_batching"] == {"max_batch_size": 32, "max_queue_delay_us": 500, "max_queue_depth": 1024}


def test_reference_json(smoke_run):
    out, _, metrics = smoke_run
    ref = json.loads((out / "reference.json").read_text())
    for k in ("model", "version", "generator_seed", "n"):
        assert k in ref
    assert ref["model"] == "scratch-detector" and ref["n"] == metrics["data"]["train"]
    dists = {**ref["features"], "score": ref["score"]}
    assert set(dists) == {"brightness", "contrast", "sharpness", "score"}
    for name, d in dists.items():
        for k in ("bin_edges", "counts", "n", "mean", "std", "quantiles", "sample"):
            assert k in d, (name, k)
        assert len(d["counts"]) == len(d["bin_edges"]) - 1
        assert sum(d["counts"]) == d["n"] == ref["n"]
        assert list(d["quantiles"]) == ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
        assert 0 < len(d["sample"]) <= 2000
        assert np.all(np.diff(d["bin_edges"]) > 0)
    assert ref["score"]["bin_edges"] == [round(i / 20, 6) for i in range(21)]


def test_other_artefacts(smoke_run):
    out, samples, metrics = smoke_run
    for f in ("model.onnx", "model.toml", "MODEL_CARD.md", "pr_curve.png", "reference.json", "metrics.json"):
        assert (out / f).is_file(), f
    card = (out / "MODEL_CARD.md").read_text()
    for section in ("Preprocessing", "Architecture", "Thresholds", "Error analysis", "Known limitations", "Reproducibility"):
        assert section in card
    m = json.loads((out / "metrics.json").read_text())
    for s in ("normal", "drifted"):
        for k in ("accuracy", "precision", "recall", "roc_auc"):
            assert k in m["results"][s]
    pngs = sorted(p.name for p in (samples / "normal").glob("*.png"))
    assert len(pngs) == 4 and all(n.endswith(("_defect.png", "_ok.png")) for n in pngs)
    assert len(list((samples / "drifted").glob("*.png"))) == 4
    lines = (samples / "labels.csv").read_text().splitlines()
    assert lines[0].startswith("file,label,") and len(lines) == 9
