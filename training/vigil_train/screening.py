"""The symptom-screening classifier: vital signs and symptoms in (missing ones imputed with the
training median inside the graph), ``home`` / ``refer`` and both probabilities out. A scikit-learn
pipeline (median imputer, scaler, logistic regression) exported with skl2onnx. Its model card
sends the hard cases, P(refer) between 0.15 and 0.85, to three doctors who decide independently.

    python -m vigil_train.screening --out models/screening/1 --version 1
    python -m vigil_train.screening --out DIR --version 2 --dataset datasets/screening-<id>

With ``--dataset`` (a directory from ``vigil dataset export``, as a retraining job gives it) the
labelled rows join the generated base data, together weighing ``--new-weight`` (3) times as much
as it; 20% of them (chosen
by prediction id) are held out, and the metrics give the accuracy on both the original holdout
and that new holdout. Lines ``progress <0..1> <what>`` report progress to a retraining job.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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


def progress(fraction: float, what: str) -> None:
    print(f"progress {fraction:.2f} {what}", flush=True)


def read_dataset(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A dataset's labelled rows: features in ``patients.FEATURES`` order (NaN where missing),
    the truth (1 = refer), and whether each row is held out (20%, by its prediction id's hash)."""
    rows, truth, held = [], [], []
    with open(path / "rows.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] not in CLASSES:
                continue
            rows.append([float(row[c]) if row.get(c) else np.nan for c in patients.FEATURES])
            truth.append(int(row["label"] == "refer"))
            held.append(hashlib.sha256(row["prediction_id"].encode()).digest()[0] < 256 // 5)
    if not rows:
        raise SystemExit(f"{path}: no rows labelled home or refer")
    return np.array(rows, dtype=np.float64), np.array(truth, dtype=np.int64), np.array(held, dtype=bool)


def evaluate(pipeline: Pipeline, x: np.ndarray, y: np.ndarray) -> dict:
    p_refer = pipeline.predict_proba(x.astype(np.float32))[:, 1]
    hard = (p_refer >= 0.15) & (p_refer < 0.85)
    predicted = np.where(p_refer >= 0.5, 1, 0)
    return {
        "patients": int(len(y)),
        "accuracy": float(np.mean(predicted == y)),
        "automated_accuracy": float(np.mean(predicted[~hard] == y[~hard])) if (~hard).any() else None,
        "automation_rate": float(1 - hard.mean()),
    }


def train(
    seed: int, n: int = 3000, dataset: pathlib.Path | None = None, new_weight: float = 3.0
) -> tuple[Pipeline, dict]:
    progress(0.05, "generating the base data")
    x, y = patients.generate(n, seed)
    holdout_x, holdout_y = patients.generate(1000, seed + 1)
    weights = np.ones(len(y))
    new = None
    if dataset is not None:
        progress(0.2, f"reading {dataset.name}")
        new_x, new_y, held = read_dataset(dataset)
        train_x, train_y = new_x[~held], new_y[~held]
        new = (new_x[held], new_y[held], len(train_y))
        # The new rows are what the model must learn: together they weigh `new_weight` times the base data.
        share = new_weight * len(y) / max(len(train_y), 1)
        weights = np.concatenate([weights, np.full(len(train_y), share)])
        x, y = np.concatenate([x, train_x]), np.concatenate([y, train_y])
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    progress(0.4, f"fitting on {len(y)} patients")
    pipeline.fit(x.astype(np.float32), CLASSES[y], classifier__sample_weight=weights)
    progress(0.7, "evaluating")
    original = evaluate(pipeline, holdout_x, holdout_y)
    metrics = {"seed": seed, "train_patients": n, **original, "holdout": original}
    if new is not None:
        new_x, new_y, trained_on = new
        metrics["training_data"] = f"generator seed {seed} ({n} patients) + {trained_on} rows of {dataset.name}"
        metrics["new_rows_trained"] = trained_on
        metrics["new_holdout"] = evaluate(pipeline, new_x, new_y) if len(new_y) else None
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
    parser.add_argument("--check-population", choices=patients.POPULATIONS, default="normal")
    parser.add_argument("--check-seed", type=int, help="the check patients' seed (default: --seed + 2)")
    parser.add_argument("--dataset", type=pathlib.Path, help="a dataset directory (rows.csv) to train on as well")
    parser.add_argument("--new-weight", type=float, default=3.0, help="the dataset's rows' weight against the base data")
    args = parser.parse_args()
    pipeline, metrics = train(args.seed, dataset=args.dataset, new_weight=args.new_weight)
    progress(0.85, "exporting to ONNX")
    export(pipeline, args.out, args.version, metrics)
    if args.check:
        seed = args.check_seed if args.check_seed is not None else args.seed + 2
        x, truth = patients.generate(args.check_patients, seed, args.check_population)
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
