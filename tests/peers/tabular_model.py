"""A tabular screening model and a table of patients for the `vigil batch` tests.

Usage: tabular_model.py DIR

Writes DIR/screening.onnx (logistic scores over age, temperature and heart rate, softmax over
[healthy, sick]), the same table as DIR/patients.csv and DIR/patients.parquet (pyarrow, snappy;
columns in another order than the model's, one temperature missing, a text column), and
DIR/expected.json: onnxruntime's answer for every row, the independent reference.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

FEATURES = ["age", "temperature", "heart_rate"]


def build_model(path: Path) -> None:
    weights = np.array([[-0.03, 0.03], [-1.2, 1.2], [-0.04, 0.04]], dtype=np.float32)
    bias = np.array([50.5, -50.5], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "screening",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main() -> None:
    out = Path(sys.argv[1])
    build_model(out / "screening.onnx")
    rng = np.random.default_rng(7)
    n = 40
    age = rng.integers(18, 90, n).astype(np.float64)
    temperature = np.round(rng.normal(37.6, 1.1, n), 1)
    heart_rate = rng.integers(55, 130, n).astype(np.float64)
    temperature[4] = np.nan
    ids = [f"P-{i + 1:03}" for i in range(n)]
    notes = [f"visit {i % 3}" for i in range(n)]

    with open(out / "patients.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "heart_rate", "note", "age", "temperature"])
        for i in range(n):
            t = "" if np.isnan(temperature[i]) else repr(float(temperature[i]))
            w.writerow([ids[i], int(heart_rate[i]), notes[i], int(age[i]), t])
    table = pa.table(
        {
            "id": ids,
            "temperature": pa.array(temperature, mask=np.isnan(temperature)),
            "age": pa.array(age.astype(np.int64)),
            "note": notes,
            "heart_rate": pa.array(heart_rate.astype(np.float32)),
        }
    )
    pq.write_table(table, out / "patients.parquet", compression="snappy")

    x = np.stack([age, temperature, heart_rate], axis=1).astype(np.float32)
    session = ort.InferenceSession(str(out / "screening.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"x": x})
    expected = [
        {"id": ids[i], "probabilities": [None if np.isnan(v) else float(v) for v in probabilities[i]]}
        for i in range(n)
    ]
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
