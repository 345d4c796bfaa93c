"""The symptom-screening classifier: vital signs and symptoms in (missing ones imputed with the
training median inside the graph), ``home`` / ``refer`` and both probabilities out. A scikit-learn
pipeline (median imputer, scaler, logistic regression) exported with skl2onnx. Its model card
sends the hard cases, P(refer) between 0.15 and 0.85, to three doctors who decide independently.

    python -m vigil_train.screening --out models/screening/1 --version 1
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vigil_data import patients

CLASSES = np.array(["home", "refer"])
MODEL_TOML = """\
name = "screening"
version = {version}
platform = "onnxruntime_onnx"
description = "Symptom screening: vital signs and symptoms in (missing ones imputed), home/refer and both probabilities out (imputer + logistic regression)"
max_batch_size = 64
labels = ["home", "refer"]

[[inputs]]
name = "patient"
datatype = "FP32"
dims = [{n_features}]
features = {features}

[[outputs]]
name = "probabilities"
datatype = "FP32"
dims = [2]

[[outputs]]
name = "label"
datatype = "BYTES"
dims = []

[thresholds]
defect = 0.5          # verdict: refer at or above
accept_below = 0.15   # home below: the model decides
reject_at = 0.85      # refer at or above: the model decides; in between, doctors do
reviewers = 3         # each hard case decided independently by three doctors (majority)

[dynamic_batching]
max_batch_size = 32
max_queue_delay_us = 500
max_queue_depth = 1024
"""


def train(seed: int, n: int = 3000) -> tuple[Pipeline, dict]:
    x, y = patients.generate(n, seed)
    holdout_x, holdout_y = patients.generate(1000, seed + 1)
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    pipeline.fit(x.astype(np.float32), CLASSES[y])
    p_refer = pipeline.predict_proba(holdout_x.astype(np.float32))[:, 1]
    hard = (p_refer >= 0.15) & (p_refer < 0.85)
    predicted = np.where(p_refer >= 0.5, 1, 0)
    metrics = {
        "seed": seed,
        "train_patients": n,
        "accuracy": float(np.mean(predicted == holdout_y)),
        "automated_accuracy": float(np.mean(predicted[~hard] == holdout_y[~hard])),
        "automation_rate": float(1 - hard.mean()),
    }
    return pipeline, metrics


def export(pipeline: Pipeline, out: pathlib.Path, version: int, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(
        pipeline,
        initial_types=[("patient", FloatTensorType([None, len(patients.FEATURES)]))],
        options={id(pipeline.named_steps["classifier"]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    toml = MODEL_TOML.format(version=version, n_features=len(patients.FEATURES), features=json.dumps(patients.FEATURES))
    (out / "model.toml").write_text(toml)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the version directory to write")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--check", type=pathlib.Path, help="also write patients, their truth and onnxruntime's answers here")
    parser.add_argument("--check-patients", type=int, default=300)
    args = parser.parse_args()
    pipeline, metrics = train(args.seed)
    export(pipeline, args.out, args.version, metrics)
    if args.check:
        x, truth = patients.generate(args.check_patients, args.seed + 2)
        session = ort.InferenceSession(str(args.out / "model.onnx"), providers=["CPUExecutionProvider"])
        named = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"patient": x.astype(np.float32)})))
        rows = [[None if np.isnan(v) else float(v) for v in row] for row in x]
        check = {
            "features": patients.FEATURES,
            "patients": rows,
            "truth": [str(CLASSES[t]) for t in truth],
            "label": [str(v) for v in named["label"]],
            "probabilities": named["probabilities"].tolist(),
        }
        args.check.write_text(json.dumps(check))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
