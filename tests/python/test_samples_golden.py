"""Golden figures for the shipped samples: what vigil-edge serves for every sample equals
onnxruntime on the same tensor and the scores, verdicts and decisions recorded in
samples/labels.csv, and the README's counts (caught, missed, wrongly rejected) follow from the
true labels."""

import csv
import pathlib

import pytest

from conftest import ROOT, preprocess
from test_inspect_parity import run_inspect

LABELS = ROOT / "samples" / "labels.csv"


@pytest.fixture(scope="module")
def labelled():
    with open(LABELS, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def served(edge_server):
    _, lines = run_inspect(edge_server, ROOT / "samples" / "normal", ROOT / "samples" / "drifted")
    assert lines[-1]["summary"]["failed"] == 0
    samples = (ROOT / "samples").resolve()
    return {str(pathlib.Path(r["path"]).resolve().relative_to(samples)): r for r in lines[:-1]}


def test_every_sample_is_served_as_recorded_and_as_onnxruntime_computes(served, labelled, model_config, onnx_session):
    assert sorted(served) == sorted(labelled), "the same 48 samples"
    assert len(served) == 48
    for name, row in labelled.items():
        r = served[name]
        expected = float(onnx_session.run(None, {"image": preprocess(ROOT / "samples" / name, model_config)})[0][0, 0])
        assert abs(r["defect_probability"] - expected) <= 1e-5, (name, r["defect_probability"], expected)
        # labels.csv keeps six decimals.
        assert abs(r["defect_probability"] - float(row["score"])) <= 1e-5 + 5e-7, (name, r["defect_probability"], row["score"])
        assert (r["verdict"], r["decision"]) == (row["verdict"], row["decision"]), name


def counts(served, labelled, folder):
    rows = [(labelled[n]["label_name"], r["verdict"], r["decision"]) for n, r in served.items() if n.startswith(folder + "/")]
    return {
        "scratched": sum(label == "defect" for label, _, _ in rows),
        "caught": sum(label == "defect" and verdict == "DEFECT" for label, verdict, _ in rows),
        "missed": sum(label == "defect" and verdict == "OK" for label, verdict, _ in rows),
        "good rejected": sum(label == "ok" and verdict == "DEFECT" for label, verdict, _ in rows),
        "accept": sum(d == "ACCEPT" for _, _, d in rows),
        "reject": sum(d == "REJECT" for _, _, d in rows),
        "human review": sum(d == "HUMAN_REVIEW" for _, _, d in rows),
    }


def test_the_readme_counts(served, labelled):
    # README, "Try it": all 12 caught on normal light; 7 caught, 5 missed, 1 good rejected under drift.
    assert counts(served, labelled, "normal") == {
        "scratched": 12, "caught": 12, "missed": 0, "good rejected": 0, "accept": 10, "reject": 12, "human review": 2,
    }
    assert counts(served, labelled, "drifted") == {
        "scratched": 12, "caught": 7, "missed": 5, "good rejected": 1, "accept": 13, "reject": 8, "human review": 3,
    }
    readme = (ROOT / "README.md").read_text()
    assert "misses 5 of the 12 scratched phones and rejects one good one" in readme
    assert "13 accept, 8 reject, 3 human review" in readme and "10 accept, 12 reject, 2 human review" in readme
