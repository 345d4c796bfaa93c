"""The scratch detector's fine-tuning recipe: the serving model read back from its ONNX file
scores exactly as onnxruntime does, and a run on a small dataset of captured images writes a
servable version whose metrics are its own (recomputed here with onnxruntime)."""

import csv
import hashlib
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SHIPPED = pathlib.Path(__file__).resolve().parents[2] / "models" / "scratch-detector" / "1"


def test_the_serving_model_read_back_from_onnx_scores_as_onnxruntime_does():
    from vigil_data import generate, to_model_input
    from vigil_train.pipeline import make_session, onnx_scores, torch_scores
    from vigil_train.scratch_finetune import load_onnx

    images, _, _ = generate(48, 5, "drifted")
    x = to_model_input(images)
    net = load_onnx(SHIPPED / "model.onnx")
    got, want = torch_scores(net, x), onnx_scores(make_session(SHIPPED / "model.onnx"), x)
    assert np.max(np.abs(got - want)) < 1e-5
    # Not a constant: the scores spread, so agreeing on them means agreeing on the weights.
    assert np.std(want) > 0.05


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_run_on_captured_images_writes_a_version_with_its_own_metrics(tmp_path):
    from PIL import Image

    from vigil_data import generate
    from vigil_data.images import write_pngs

    images, labels, _ = generate(60, 9, "drifted")
    pngs = write_pngs(images, labels, tmp_path / "pngs")
    dataset = tmp_path / "dataset"
    (dataset / "inputs").mkdir(parents=True)
    with open(dataset / "rows.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["prediction_id", "time", "model_version", "brightness", "label", "capture"])
        for i, png in enumerate(pngs):
            data = png.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            (dataset / "inputs" / sha).write_bytes(data)
            label = "defect" if png.name.endswith("_defect.png") else "ok"
            rows.writerow([f"p{i}", "", "1", "", label, f"scratch-detector/{sha}"])
        # Rows the recipe must skip: unlabelled, and labelled without a captured image.
        rows.writerow(["p-unlabelled", "", "1", "", "", f"scratch-detector/{sha}"])
        rows.writerow(["p-no-image", "", "1", "", "ok", ""])
    out = tmp_path / "2"
    args = ["--out", str(out), "--version", "2", "--dataset", str(dataset), "--base", str(SHIPPED)]
    args += ["--epochs", "1", "--steps", "2", "--base-images", "64", "--holdout-images", "64"]
    done = subprocess.run([sys.executable, "-m", "vigil_train.scratch_finetune", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "progress 0.30 fine-tuning on" in done.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_rows"] == {"unlabelled": 1, "no_image": 1, "undecodable": 0}
    assert metrics["new_images"] == 60
    assert (out / "model.toml").read_text().count("version = 2") == 1
    assert json.loads((out / "reference.json").read_text())["n"] == 60
    # The new holdout's accuracy, recomputed from the written model with onnxruntime.
    import onnxruntime as ort

    from vigil_data import to_model_input

    held = [hashlib.sha256(f"p{i}".encode()).digest()[0] < 256 // 5 for i in range(60)]
    x = to_model_input(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]))[held]
    y = labels[held]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"image": x})[0][:, 0]
    threshold = metrics["thresholds"]["defect"]
    assert metrics["new_holdout"]["images"] == int(sum(held))
    assert metrics["new_holdout"]["accuracy"] == pytest.approx(float(np.mean((scores >= threshold) == (y == 1))))
