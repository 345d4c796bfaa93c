"""The anti-spam classifier: TF-IDF over words and word pairs, then logistic regression, exported
with skl2onnx as one ONNX graph that takes the post's text (a string tensor) and returns the label
(``ham`` / ``spam``) and both class probabilities. Writes a model version directory Vigil serves:
``model.onnx``, ``model.toml``, ``vocabulary.txt`` (the words the vectoriser knows, for the
out-of-vocabulary input metric) and ``metrics.json``.

``--variant`` builds deliberately bad versions for rollout drills: ``shuffled`` learns from
shuffled labels, ``all-spam`` flags every post.

    python -m vigil_train.spam --out models/spam-filter/1 --version 1
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from vigil_data import posts

CLASSES = np.array(["ham", "spam"])
MODEL_TOML = """\
name = "spam-filter"
version = {version}
platform = "onnxruntime_onnx"
description = "Anti-spam classifier for social posts: the post's text in, ham/spam and both probabilities out (TF-IDF + logistic regression, {variant})"
max_batch_size = 64
labels = ["ham", "spam"]

[[inputs]]
name = "text"
datatype = "BYTES"
dims = [1]
text = {{ vocabulary = "vocabulary.txt", languages = ["eng"] }}

[[outputs]]
name = "probabilities"
datatype = "FP32"
dims = [2]

[[outputs]]
name = "label"
datatype = "BYTES"
dims = []

[dynamic_batching]
max_batch_size = 32
max_queue_delay_us = 500
max_queue_depth = 1024
"""


def train(seed: int, variant: str, n: int = 4000) -> tuple[Pipeline, dict]:
    """Fits the pipeline on ``n`` generated posts; returns it and holdout metrics."""
    texts, labels = posts.generate(n, seed)
    holdout_texts, holdout_labels = posts.generate(1000, seed + 1)
    rng = np.random.default_rng(seed)
    if variant == "shuffled":
        labels = rng.permutation(labels)
    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, lowercase=True)),
            ("classifier", LogisticRegression(C=4.0, max_iter=1000)),
        ]
    )
    pipeline.fit(texts, CLASSES[labels])
    if variant == "all-spam":
        pipeline.named_steps["classifier"].intercept_ += 25.0
    predicted = pipeline.predict(holdout_texts)
    truth = CLASSES[holdout_labels]
    spam = truth == "spam"
    metrics = {
        "variant": variant,
        "seed": seed,
        "train_posts": n,
        "holdout_posts": len(holdout_texts),
        "accuracy": float(np.mean(predicted == truth)),
        "spam_recall": float(np.mean(predicted[spam] == "spam")),
        "ham_flagged": float(np.mean(predicted[~spam] == "spam")),
    }
    return pipeline, metrics


def export(pipeline: Pipeline, out: pathlib.Path, version: int, variant: str, metrics: dict) -> None:
    """Writes the version directory."""
    out.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={
            id(pipeline.named_steps["classifier"]): {"zipmap": False},
            # Lower-casing in ONNX Runtime needs a locale the host has; C.UTF-8 is everywhere.
            id(pipeline.named_steps["tfidf"]): {"locale": "C.UTF-8"},
        },
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    vocabulary = sorted({w for term in pipeline.named_steps["tfidf"].vocabulary_ for w in term.split(" ")})
    (out / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")
    (out / "model.toml").write_text(MODEL_TOML.format(version=version, variant=variant))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def onnx_outputs(model: pathlib.Path, texts: list[str]) -> dict:
    """The exported graph's answers from onnxruntime, for checks against the servers."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {"text": np.array(texts, dtype=object).reshape(-1, 1)}
    named = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    return {"label": [str(v) for v in named["label"]], "probabilities": named["probabilities"].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the version directory to write")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variant", choices=["good", "shuffled", "all-spam"], default="good")
    parser.add_argument(
        "--check", type=pathlib.Path, help="also write posts and onnxruntime's answers to them here (JSON)"
    )
    args = parser.parse_args()
    pipeline, metrics = train(args.seed, args.variant)
    export(pipeline, args.out, args.version, args.variant, metrics)
    if args.check:
        texts, labels = posts.generate(200, args.seed + 2)
        texts += ["", "Ünïcödé ça va? 日本語のテキスト", "win win win " * 40]
        answers = onnx_outputs(args.out / "model.onnx", texts)
        args.check.write_text(json.dumps({"texts": texts, **answers}))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
