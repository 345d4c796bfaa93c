"""The two models of the recommendation pipeline, both scikit-learn exported with skl2onnx:

- ``profile``: a user's 30-day clickstream in, "owns a car" as ``no`` / ``unknown`` / ``yes`` and
  the three probabilities out (scaled counts, logistic regression);
- ``recommender``: the profile's three probabilities in, a score per offer out (``car_insurance``,
  ``general_deals``, ``transit_pass``; logistic regression).

    python -m vigil_train.recommender --model profile --out models/profile/1 --version 1
    python -m vigil_train.recommender --model recommender --out models/recommender/1 --version 1
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vigil_data import clickstream

MODEL_TOML = """\
name = "{name}"
version = {version}
platform = "onnxruntime_onnx"
description = "{description}"
max_batch_size = 64
labels = {labels}

[[inputs]]
name = "{input}"
datatype = "FP32"
dims = [{n_features}]
features = {features}

[[outputs]]
name = "probabilities"
datatype = "FP32"
dims = [{n_labels}]

[[outputs]]
name = "label"
datatype = "BYTES"
dims = []
"""


def train(model: str, seed: int) -> tuple[Pipeline, list[str], list[str], dict]:
    x, owns = clickstream.generate(4000, seed)
    profile = clickstream.profile_labels(x, owns)
    if model == "profile":
        pipeline = Pipeline(
            [("scale", StandardScaler()), ("classifier", LogisticRegression(C=10.0, max_iter=2000))]
        )
        pipeline.fit(x.astype(np.float32), np.array(clickstream.PROFILES)[profile])
        accuracy = float(np.mean(pipeline.predict(x.astype(np.float32)) == np.array(clickstream.PROFILES)[profile]))
        return pipeline, clickstream.FEATURES, clickstream.PROFILES, {"train_accuracy": accuracy}
    # The recommender learns from profile answers as the profile model gives them (soft inputs).
    rng = np.random.default_rng(seed)
    onehot = np.eye(3)[profile]
    soft = np.clip(onehot * rng.uniform(0.5, 1.0, (len(profile), 1)) + rng.uniform(0, 0.25, (len(profile), 3)), 0, None)
    soft = soft / soft.sum(axis=1, keepdims=True)
    pipeline = Pipeline([("classifier", LogisticRegression(C=10.0, max_iter=2000))])
    pipeline.fit(soft.astype(np.float32), np.array(clickstream.OFFERS)[clickstream.best_offer(profile)])
    names = [f"p_{p}" for p in clickstream.PROFILES]
    return pipeline, names, clickstream.OFFERS, {}


def export(pipeline: Pipeline, model: str, features: list[str], labels: list[str], out: pathlib.Path, version: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    input_name = "clickstream" if model == "profile" else "profile"
    onx = to_onnx(
        pipeline,
        initial_types=[(input_name, FloatTensorType([None, len(features)]))],
        options={id(pipeline.named_steps["classifier"]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    description = (
        "User profile: a 30-day clickstream in, owns a car (no / unknown / yes) out"
        if model == "profile"
        else "Recommender: the user profile's probabilities in, a score per offer out"
    )
    (out / "model.toml").write_text(
        MODEL_TOML.format(
            name=model,
            version=version,
            description=description,
            labels=json.dumps(labels),
            input=input_name,
            n_features=len(features),
            features=json.dumps(features),
            n_labels=len(labels),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["profile", "recommender"], required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--check", type=pathlib.Path, help="also write users and onnxruntime's answers here (JSON)")
    parser.add_argument("--check-users", type=int, default=400)
    args = parser.parse_args()
    pipeline, features, labels, metrics = train(args.model, args.seed)
    export(pipeline, args.model, features, labels, args.out, args.version)
    if args.check:
        session = ort.InferenceSession(str(args.out / "model.onnx"), providers=["CPUExecutionProvider"])
        check = {}
        for phase, shifted in [("normal", False), ("shifted", True)]:
            x, owns = clickstream.generate(args.check_users, args.seed + (3 if shifted else 2), shifted=shifted)
            if args.model == "recommender":
                x = np.eye(3)[clickstream.profile_labels(x, owns)]  # any valid profile answers
            named = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})))
            check[phase] = {
                "inputs": x.tolist(),
                "owns_car": owns.tolist(),
                "label": [str(v) for v in named["label"]],
                "probabilities": named["probabilities"].tolist(),
            }
        args.check.write_text(json.dumps(check))
    print(json.dumps({"model": args.model, **metrics}))


if __name__ == "__main__":
    main()
