"""Artefacts of a pipeline run: model.toml, pr_curve.png, samples, slices, drift check, card."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vigil_data import compute_features, generate
from vigil_data import generator as G
from vigil_data.generator import DISTRACTOR_TYPES

from . import metrics as M

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def load_previous_metrics(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


HEADLINE_KEYS = ("accuracy", "precision", "recall", "roc_auc")


def headline(m: dict) -> dict[str, Any]:
    """The numbers compared between runs."""
    out: dict[str, Any] = {"seed": m.get("seed"), "thresholds": m.get("thresholds")}
    for s in ("normal", "drifted"):
        r = m.get("results", {}).get(s, {})
        out[s] = {k: r.get(k) for k in HEADLINE_KEYS}
    out["total_seconds"] = m.get("timing_s", {}).get("total")
    out["train_seconds"] = m.get("timing_s", {}).get("train")
    return out


def generator_speed(log: Any, n: int = 1024) -> dict[str, float]:
    """Measured generator throughput (normal conditions), one thread and two."""
    out = {}
    for workers in (1, 2):
        t = time.perf_counter()
        generate(n, 12345, "normal", workers=workers)
        out[f"workers_{workers}"] = n / (time.perf_counter() - t)
    log(f"generator speed: {out['workers_1']:.0f} img/s (1 thread), {out['workers_2']:.0f} img/s (2 threads)")
    return out


# --------------------------------------------------------------------------------------------
# Error analysis
# --------------------------------------------------------------------------------------------

SLICE_SPECS = {
    # name: (param key, bin edges, format)
    "scratch_contrast": ("scratch_contrast", [6, 8, 10, 12, 20, 35, 70.01], "{:g}"),
    "scratch_length": ("scratch_length", [20, 35, 50, 70, 90.01], "{:g}"),
    "scratch_width": ("scratch_width", [0.5, 0.8, 1.1, 1.51], "{:g}"),
    "light_level": ("light_level", [0.4, 0.5, 0.6, 0.7, 0.85, 1.0, 1.21], "{:g}"),
    "blur_sigma": ("blur_sigma", [0.3, 0.8, 1.2, 1.6, 2.1, 2.6, 3.01], "{:g}"),
    "noise_sigma": ("noise_sigma", [1.0, 1.5, 2.0, 2.51], "{:g}"),
}


def _groups(params: list[dict]) -> list[tuple[str, np.ndarray]]:
    d = [set(p["distractors"]) for p in params]
    groups = [("none", np.array([len(x) == 0 for x in d]))]
    for t in DISTRACTOR_TYPES:
        groups.append((t, np.array([t in x for x in d])))
    groups.append(("2 or more", np.array([len(x) >= 2 for x in d])))
    return groups


def error_slices(test_sets: dict, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (key, edges, fmt) in SLICE_SPECS.items():
        out[name] = {
            set_name: M.slice_by_bins([p[key] for p in ds.params], ds.scores, ds.labels, threshold, edges, fmt)
            for set_name, ds in test_sets.items()
        }
    out["scratch_polarity"] = {
        set_name: M.slice_by_groups(
            [(pol, np.array([p["scratch_polarity"] == pol for p in ds.params])) for pol in ("bright", "dark")],
            ds.scores,
            ds.labels,
            threshold,
        )
        for set_name, ds in test_sets.items()
    }
    out["distractor"] = {
        set_name: M.slice_by_groups(_groups(ds.params), ds.scores, ds.labels, threshold)
        for set_name, ds in test_sets.items()
    }
    # Operating envelope on the sweep set: recall and FPR by light x blur.
    sw = test_sets["sweep"]
    light = np.array([p["light_level"] for p in sw.params])
    blur = np.array([p["blur_sigma"] for p in sw.params])
    le, be = [0.4, 0.6, 0.8, 1.0, 1.21], [0.3, 1.0, 1.6, 2.2, 3.01]
    grid = []
    for l0, l1 in zip(le[:-1], le[1:]):
        row = []
        for b0, b1 in zip(be[:-1], be[1:]):
            m = (light >= l0) & (light < l1) & (blur >= b0) & (blur < b1)
            r = M.slice_by_groups([("cell", m)], sw.scores, sw.labels, threshold)[0]
            row.append({"light": [l0, l1], "blur": [b0, b1], **{k: r[k] for k in ("n_defect", "recall", "n_ok", "false_positive_rate")}})
        grid.append(row)
    out["sweep_light_x_blur"] = grid
    return out


def worst_examples(ds: Any, threshold: float, k: int = 6) -> dict[str, list[dict]]:
    keys = ("scratch_contrast", "scratch_length", "scratch_width", "scratch_polarity", "light_level", "blur_sigma", "noise_sigma", "distractors")
    pos = np.nonzero(ds.labels == 1)[0]
    neg = np.nonzero(ds.labels == 0)[0]
    fn = pos[np.argsort(ds.scores[pos], kind="stable")[:k]]
    fp = neg[np.argsort(-ds.scores[neg], kind="stable")[:k]]

    def row(i: int) -> dict:
        return {"index": int(i), "score": float(ds.scores[i]), **{kk: ds.params[i][kk] for kk in keys}}

    return {"lowest_scored_defects": [row(i) for i in fn], "highest_scored_ok": [row(i) for i in fp]}


def drift_check(train_set: Any, test_sets: dict) -> dict[str, Any]:
    """KS statistic and PSI of each monitored variable: test sets vs the training reference."""
    from scipy.stats import ks_2samp

    from .reference import BIN_EDGES, SAMPLE_SIZE, histogram

    out: dict[str, Any] = {}
    ref_vals = {**train_set.features, "score": train_set.scores}
    for set_name in ("normal", "drifted"):
        ds = test_sets[set_name]
        vals = {**ds.features, "score": ds.scores}
        row = {}
        for var in ("brightness", "contrast", "sharpness", "score"):
            ref = np.asarray(ref_vals[var])[:SAMPLE_SIZE]
            cur = np.asarray(vals[var])
            ks = ks_2samp(ref, cur)
            edges = BIN_EDGES[var]
            p = np.asarray(histogram(ref_vals[var], edges), float)
            q = np.asarray(histogram(cur, edges), float)
            p = np.clip(p / p.sum(), 1e-4, None)
            q = np.clip(q / q.sum(), 1e-4, None)
            psi = float(np.sum((q - p) * np.log(q / p)))
            row[var] = {
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
                "psi": psi,
                "mean": float(np.mean(cur)),
                "reference_mean": float(np.mean(ref_vals[var])),
            }
        out[set_name] = row
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

MODEL_TOML = """\
name = "scratch-detector"
version = 1
platform = "onnxruntime_onnx"
description = "Scratch detector for phone back glass: one 128x128 RGB line-camera image in, P(scratch) out (sigmoid in the graph)"
max_batch_size = 64
labels = ["ok", "defect"]
# Batches under load run on one intra-op thread: the other core serves the network and decodes
# images instead of spinning beside the run. A lone request (the line's usual case) runs inline
# on a session of its own with a thread per core (one more copy of this 108 KB
# model). Measured in the README (serving speed).
intra_op_threads = 1
inline_intra_op_threads = 0

[[inputs]]
name = "image"
datatype = "FP32"
dims = [1, 128, 128]          # per item, without the batch dimension

[[outputs]]
name = "defect_probability"
datatype = "FP32"
dims = [1]

[preprocess]
kind = "image"
width = 128
height = 128
channels = "gray"              # gray = 0.2126 R + 0.7152 G + 0.0722 B, on 0..1 scale
resize = "bilinear"
mean = 0.5
std = 0.5                      # x = (gray - mean) / std
layout = "NCHW"

[thresholds]
defect = {defect}                  # verdict DEFECT when score >= defect
accept_below = {accept_below}
reject_at = {reject_at}

[dynamic_batching]
max_batch_size = 32
max_queue_delay_us = 500
max_queue_depth = 1024
"""


def write_model_toml(path: Path, t: dict[str, float]) -> None:
    text = MODEL_TOML
    for k in ("defect", "accept_below", "reject_at"):
        text = text.replace("{" + k + "}", f"{t[k]:.4f}")
    path.write_text(text)


def plot_pr(path: Path, test_sets: dict, t: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    colours = {"normal": "tab:blue", "drifted": "tab:red"}
    for name in ("normal", "drifted"):
        ds = test_sets[name]
        p, r, _ = M.pr_curve(ds.scores, ds.labels)
        ax.plot(r, p, color=colours[name], lw=1.6, label=f"{name} (AP {M.average_precision(ds.scores, ds.labels):.3f})")
        m = M.binary_metrics(ds.scores, ds.labels, t["defect"])
        ax.plot([m["recall"]], [m["precision"]], "o", color=colours[name], ms=8, mec="black")
        ax.annotate(
            f"t={t['defect']:.3f}\nR={m['recall']:.3f} P={m['precision']:.3f}",
            (m["recall"], m["precision"]),
            textcoords="offset points",
            xytext=(-95, -32 if name == "normal" else 12),
            fontsize=8,
            color=colours[name],
        )
    ax.axvline(0.97, color="grey", ls=":", lw=1)
    ax.axhline(0.95, color="grey", ls=":", lw=1)
    ax.set_xlabel("recall (defects caught)")
    ax.set_ylabel("precision (rejects that are defects)")
    ax.set_title("scratch-detector v1: precision-recall, test sets (markers: shipped threshold)", fontsize=9)
    ax.set_xlim(0.0, 1.005)
    ax.set_ylim(0.45, 1.005)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_samples(samples_dir: Path, cfg: Any, seed: int, sess: Any, t: dict[str, float], log: Any) -> list[dict]:
    """``n_samples`` PNGs per condition (half defects), same scenes under both conditions."""
    from PIL import Image

    from vigil_data import to_model_input

    from .pipeline import onnx_scores

    half = cfg.n_samples // 2
    rows: list[dict] = []
    pool = max(4 * cfg.n_samples, 32)
    chosen: Optional[list[int]] = None
    for cond in ("normal", "drifted"):
        images, labels, params = generate(pool, seed, cond)
        if chosen is None:
            pos = [i for i in range(pool) if labels[i] == 1][:half]
            neg = [i for i in range(pool) if labels[i] == 0][: cfg.n_samples - half]
            chosen = sorted(pos + neg)
        d = samples_dir / cond
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):
            old.unlink()
        sel = images[chosen]
        scores = onnx_scores(sess, to_model_input(sel))
        feats = compute_features(sel)
        for j, i in enumerate(chosen):
            name = "defect" if labels[i] == 1 else "ok"
            fname = f"{cond}_{j:03d}_{name}.png"
            Image.fromarray(images[i], "RGB").save(d / fname)
            p = params[i]
            s = float(scores[j])
            rows.append(
                {
                    "file": f"{cond}/{fname}",
                    "label": int(labels[i]),
                    "label_name": name,
                    "conditions": cond,
                    "score": f"{s:.6f}",
                    "verdict": "DEFECT" if s >= t["defect"] else "OK",
                    "decision": "ACCEPT" if s < t["accept_below"] else ("REJECT" if s >= t["reject_at"] else "HUMAN_REVIEW"),
                    "brightness": f"{feats['brightness'][j]:.4f}",
                    "contrast": f"{feats['contrast'][j]:.4f}",
                    "sharpness": f"{feats['sharpness'][j]:.4f}",
                    "scratch_contrast": "" if p["scratch_contrast"] is None else p["scratch_contrast"],
                    "scratch_length": "" if p["scratch_length"] is None else p["scratch_length"],
                    "light_level": p["light_level"],
                    "blur_sigma": p["blur_sigma"],
                    "noise_sigma": p["noise_sigma"],
                    "distractors": ";".join(p["distractors"]),
                }
            )
    with open(samples_dir / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    log(f"samples: {len(rows)} PNGs + labels.csv in {samples_dir}")
    return rows


LOOKALIKE_TEXT = {
    "dust": "dust specks (clusters of 1-8 small bright or dark dots)",
    "smudge": "smudges (soft film with parallel wipe streaks)",
    "fingerprint": "fingerprints (warped ridge rings, 3-6 px period)",
    "reflection": "reflections of a light panel (soft-edged bright rectangle)",
    "glare": "glare streaks (long bright bands, sigma 3-8 px, across the view)",
    "frame_edge": "the frame edge (dark border with a thin bright bevel line)",
}

# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def _pct(x: Optional[float], nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}%"


def _f(x: Optional[float], nd: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _defect_slice_table(sl: dict, sets: tuple[str, ...] = ("normal", "drifted")) -> str:
    header = ["slice"] + [h for s in sets for h in (f"{s}: defects", f"{s}: recall")]
    rows = []
    for i, r0 in enumerate(sl[sets[0]]):
        row = [r0["slice"]]
        for s in sets:
            r = sl[s][i]
            row += [str(r["n_defect"]), _pct(r["recall"])]
        rows.append(row)
    return _table(header, rows)


def _both_slice_table(sl: dict, sets: tuple[str, ...] = ("normal", "drifted", "sweep")) -> str:
    header = ["slice"] + [h for s in sets for h in (f"{s}: defects", "recall", "ok", "FPR")]
    rows = []
    for i, r0 in enumerate(sl[sets[0]]):
        row = [r0["slice"]]
        for s in sets:
            r = sl[s][i]
            row += [str(r["n_defect"]), _pct(r["recall"]), str(r["n_ok"]), _pct(r["false_positive_rate"])]
        rows.append(row)
    return _table(header, rows)


def write_card(path: Path, m: dict) -> None:
    """MODEL_CARD.md from the metrics dict alone (so it can be re-rendered from metrics.json)."""
    R = m["results"]
    T = m["thresholds"]
    S = m["slices"]
    D = m["data"]
    tr = m["training"]
    tm = m["timing_s"]
    gen = m["generator_images_per_s"]
    cond = D["conditions"]
    acc = m["acceptance"]

    def rng(c: dict, k: str, nd: int = 2) -> str:
        lo, hi = c[k]
        return f"{lo:.{nd}f}" if lo == hi else f"{lo:.{nd}f} - {hi:.{nd}f}"

    lines: list[str] = []
    add = lines.append
    add("# Model card: scratch-detector v1")
    add("")
    add(
        "Binary scratch detector for the end-of-line visual inspection of phone back glass. One image "
        "in, one score out: `defect_probability`, the probability that the surface carries a scratch. "
        "Served by Vigil from `models/scratch-detector/1/` (`model.onnx` + `model.toml`)."
    )
    add("")
    add("_This card, `metrics.json`, `reference.json`, `pr_curve.png` and `samples/` are written by "
        "`training/run.sh`; numbers below are from the run that produced the committed `model.onnx`._")
    add("")
    add("## Summary")
    add("")
    hdr = ["test set", "images", "accuracy", "precision", "recall", "ROC AUC", "FPR", "missed scratches", "false rejects"]
    rows = []
    for name, label in (("normal", "normal"), ("drifted", "drifted (dim + blur)")):
        r = R[name]
        rows.append([label, str(r["n"]), _f(r["accuracy"]), _f(r["precision"]), _f(r["recall"]), _f(r["roc_auc"]),
                     _f(r["false_positive_rate"]), f"{r['fn']} / {r['n_defect']}", f"{r['fp']} / {r['n_ok']}"])
    add(_table(hdr, rows))
    add("")
    add(f"At the shipped threshold `defect = {T['defect']:.4f}`. Acceptance (normal set: recall >= 0.97 with "
        f"precision >= 0.95): **{'PASS' if acc['passed'] else 'FAIL'}** (recall {acc['recall']:.4f}, precision "
        f"{acc['precision']:.4f}).")
    add("")
    add("![precision-recall](pr_curve.png)")
    add("")
    add("## Input: framing and format")
    add("")
    add("- A fixed line-camera view of a 128 x 128 px patch of a phone's back panel, **RGB, uint8**, "
        "one image per inspection. Typical content: glass in one of five body tints, a low-frequency "
        "texture and fine grain, vignetting, a soft specular highlight, and the look-alikes listed below.")
    add("- The phone's frame edge may enter the view (dark background beyond a thin bright bevel).")
    add("- Other sizes are accepted by the server, which resizes (bilinear) to 128 x 128 first; the model "
        "was trained on native 128 x 128 images only.")
    add("")
    add("## Preprocessing (the serving contract, also in `model.toml`)")
    add("")
    add("```text")
    add("gray = (0.2126 * R + 0.7152 * G + 0.0722 * B) / 255      # float32, no rounding, R,G,B in 0..255")
    add("x    = (gray - 0.5) / 0.5                                 # mean 0.5, std 0.5")
    add("input  image               FP32 [N, 1, 128, 128]  (NCHW, dynamic batch)")
    add("output defect_probability  FP32 [N, 1]            (sigmoid applied inside the graph)")
    add("```")
    add("")
    add("Reference implementation: `training/vigil_data/preprocess.py` (used for training, evaluation and "
        "the samples). `samples/labels.csv` lists the expected score of every sample image, so a server can "
        "check its decoding + preprocessing + inference end to end (ONNX Runtime reproduces them to ~1e-6).")
    add("")
    add("Monitored input features (`training/vigil_data/features.py`, computed in float64 on "
        "`gray * 255`): `brightness` = mean, `contrast` = population std, `sharpness` = population variance "
        "of the 3x3 Laplacian `[[0,1,0],[1,-4,1],[0,1,0]]` over the 126 x 126 interior.")
    add("")
    add("## Architecture")
    add("")
    w = m["config"]["widths"]
    add(f"`{tr['architecture']}`, {tr['parameters']:,} parameters, ONNX opset {m['export']['opset']} "
        f"({m['export']['bytes'] / 1024:.0f} KiB):")
    add("")
    add("```text")
    add(f"conv 5x5 stride 2, 1 -> {w[0]} (zero-mean kernels: high-pass)   128 -> 64   BN, ReLU")
    add(f"conv 3x3, {w[0]} -> {w[1]}                                       64         BN, ReLU, maxpool 2")
    add(f"conv 3x3, {w[1]} -> {w[2]}                                       32         BN, ReLU, maxpool 2")
    add(f"conv 3x3, {w[2]} -> {w[3]}                                       16         BN, ReLU")
    add(f"global max pool (+) global mean pool -> {2 * w[3]} -> linear -> 1 logit -> sigmoid")
    add("```")
    add("")
    add("The first layer works at full resolution (its 5x5 kernels overlap at stride 2), so 1 px wide "
        "scratches are seen before any downsampling; its kernels are constrained to sum to zero, so the "
        "surface level, lighting gradient and vignetting do not reach the rest of the network. The global "
        "max pool lets a short scratch anywhere in the view decide the score.")
    add("")
    add("## Training data and training")
    add("")
    add(f"Synthetic, from `training/vigil_data/generator.py` (deterministic; seed {m['seeds']['train']} for "
        f"training). Generator speed on this machine: {gen['workers_1']:.0f} images/s on one thread, "
        f"{gen['workers_2']:.0f} images/s on two.")
    add("")
    add(f"- **Defects (label 1):** one scratch: length {G.SCRATCH_LENGTH[0]:g} - {G.SCRATCH_LENGTH[1]:g} px, "
        f"profile width (Gaussian sigma) {G.SCRATCH_WIDTH[0]:g} - {G.SCRATCH_WIDTH[1]:g} px, curvature up to "
        f"{G.MAX_CURVATURE:g} /px (either side), any orientation, {G.BRIGHT_FRACTION:.0%} bright / "
        f"{1 - G.BRIGHT_FRACTION:.0%} dark, partly intermittent, tapered ends; contrast (peak, grey levels "
        f"at nominal light, before blur) {G.FAINT_CONTRAST[0]:g} - {G.FAINT_CONTRAST[1]:g} for "
        f"{G.FAINT_FRACTION:.0%} of them (faint: close to the noise and grain), log-uniform "
        f"{G.CONTRAST[0]:g} - {G.CONTRAST[1]:g} for the rest.")
    add("- **Look-alikes (label 0 unless a scratch is present too)**, each independently of the label: "
        + ", ".join(f"{LOOKALIKE_TEXT[t]} ({G.DISTRACTOR_PROB[t]:.0%})" for t in G.DISTRACTOR_TYPES) + ".")
    add("- Defect rate 50%.")
    add("")
    hdr = ["knob", "normal (training, validation, normal test)", "drifted test", "sweep test"]
    knob_names = [("light_level", "light level (x nominal)"), ("gradient_strength", "lighting gradient strength"),
                  ("gradient_direction_deg", "gradient direction (deg)"), ("blur_sigma", "blur sigma (px)"),
                  ("noise_sigma", "sensor noise sigma (grey levels)"), ("gain_r", "colour gain R"),
                  ("gain_g", "colour gain G"), ("gain_b", "colour gain B")]
    add(_table(hdr, [[label, rng(cond["normal"], k), rng(cond["drifted"], k), rng(cond["sweep"], k)] for k, label in knob_names]))
    add("")
    add(f"Sizes: train {D['train']:,}, validation {D['validation']:,} (threshold choice), test normal "
        f"{D['normal']:,}, test drifted {D['drifted']:,}, sweep {D['sweep']:,}. The normal and drifted test "
        "sets share their seed: the same scenes under both conditions, so their difference is the drift alone.")
    add("")
    add(f"Training: {tr['epochs']} epoch{'s' if tr['epochs'] != 1 else ''}, batch {tr['batch_size']}, {tr['optimizer']}, binary cross-entropy, "
        f"{tr['augmentation']}; PyTorch on CPU, {m['config']['threads']} threads, deterministic algorithms. "
        f"Training took {tr['train_seconds']:.0f} s ({tr['train_images_per_s']:.0f} images/s); the whole "
        f"pipeline {tm['total']:.0f} s (generate {tm['generate']:.0f} s, train {tm['train']:.0f} s, export "
        f"{tm['export']:.1f} s, evaluate {tm['evaluate']:.0f} s, artefacts {tm['artefacts']:.0f} s).")
    add("")
    add(_table(["epoch", "train loss", "val loss", "val ROC AUC"],
               [[str(h["epoch"]), _f(h["train_loss"]), _f(h["val_loss"]), _f(h["val_roc_auc"])] for h in tr["history"]]))
    add("")
    add(f"Export check: ONNX Runtime vs PyTorch on {m['export']['check_batch']} test images (and batches of "
        f"1 and 7): max |difference| {m['export']['max_abs_diff_vs_pytorch']:.1e} (required <= 1e-5). All "
        "metrics in this card are computed with the exported `model.onnx` under ONNX Runtime.")
    add("")
    add("## Metrics at the shipped threshold")
    add("")
    hdr = ["metric", "validation (normal)", "test normal", "test drifted", "sweep"]
    keys = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"),
            ("f1", "F1"), ("roc_auc", "ROC AUC"), ("average_precision", "average precision")]
    rows = [[label] + [_f(R[s][k]) for s in ("validation", "normal", "drifted", "sweep")] for k, label in keys]
    rows.append(["TP / FP / TN / FN"] + [f"{R[s]['tp']} / {R[s]['fp']} / {R[s]['tn']} / {R[s]['fn']}" for s in ("validation", "normal", "drifted", "sweep")])
    add(_table(hdr, rows))
    add("")
    add("## Thresholds")
    add("")
    add(_table(["threshold", "value", "rule (on the validation split, normal conditions)"], [
        ["`defect` (verdict DEFECT when score >= defect)", f"{T['defect']:.4f}", m["threshold_policy"]["defect"]],
        ["`accept_below` (ACCEPT when score < accept_below)", f"{T['accept_below']:.4f}", m["threshold_policy"]["accept_below"]],
        ["`reject_at` (REJECT when score >= reject_at)", f"{T['reject_at']:.4f}", m["threshold_policy"]["reject_at"]],
    ]))
    add("")
    add("Why: on a production line a missed scratch ships a bad phone to a customer (a return, a "
        "warranty claim, the brand's reputation), while a false reject only costs a second look at a good "
        "phone. The verdict threshold is therefore set for recall, not for accuracy: the highest score "
        "threshold that still catches 98% of the validation scratches (above the 0.97 requirement, leaving "
        "margin for sampling noise), accepting the precision that comes with it.")
    add("")
    add("For the three-way decision the server adds a human-review band: scores below `accept_below` "
        "(chosen so that 99.5% of validation scratches score above it) are accepted automatically, scores "
        "at or above `reject_at` (the lowest threshold where the validation precision is >= 99.5%) are rejected automatically, and "
        "everything in between goes to an inspector.")
    if T["reject_at"] <= T["defect"]:
        add("")
        add("In this run the validation precision is already >= 99.5% at the verdict threshold, so "
            "`reject_at` equals `defect`: every DEFECT verdict is an automatic REJECT, and the review band "
            "covers the low scores between `accept_below` and `defect` where the faint scratches sit.")
    add("")
    hdr = ["test set", "ACCEPT", "HUMAN_REVIEW", "REJECT", "review rate", "scratches auto-accepted", "good phones auto-rejected"]
    rows = []
    for s in ("normal", "drifted"):
        d = R[s]["decisions"]
        rows.append([s, str(d["accept"]), str(d["review"]), str(d["reject"]), _pct(d["review_rate"]),
                     f"{d['escaped_defects']} ({_pct(d['escape_rate'], 2)})", f"{d['false_rejects']} ({_pct(d['false_reject_rate'], 2)})"])
    add(_table(hdr, rows))
    add("")
    add("## Error analysis")
    add("")
    add("Recall is over the defect images of a slice, FPR (false-positive rate) over its ok images, both at "
        "the shipped threshold. Scratch parameters are the generator's (contrast in grey levels at nominal "
        "light, before blur).")
    add("")
    add("### Scratch contrast")
    add("")
    add(_defect_slice_table(S["scratch_contrast"], ("normal", "drifted", "sweep")))
    add("")
    add("### Scratch length (px)")
    add("")
    add(_defect_slice_table(S["scratch_length"], ("normal", "drifted", "sweep")))
    add("")
    add("### Scratch width (profile sigma, px)")
    add("")
    add(_defect_slice_table(S["scratch_width"], ("normal", "drifted", "sweep")))
    add("")
    add("### Scratch polarity")
    add("")
    add(_defect_slice_table(S["scratch_polarity"], ("normal", "drifted", "sweep")))
    add("")
    add("### Light level (x nominal)")
    add("")
    add(_both_slice_table(S["light_level"]))
    add("")
    add("### Blur (Gaussian sigma, px)")
    add("")
    add(_both_slice_table(S["blur_sigma"]))
    add("")
    add("### Sensor noise (sigma, grey levels)")
    add("")
    add(_both_slice_table(S["noise_sigma"]))
    add("")
    add("### Look-alikes present (distractor type)")
    add("")
    add("A row holds every image with that look-alike (an image may have several).")
    add("")
    add(_both_slice_table(S["distractor"]))
    add("")
    add("### Operating envelope (sweep set): recall / FPR by light level x blur")
    add("")
    grid = S["sweep_light_x_blur"]
    hdr = ["light \\ blur"] + [f"{c['blur'][0]:g} - {c['blur'][1]:g}" for c in grid[0]]
    rows = []
    for row in grid:
        rows.append([f"{row[0]['light'][0]:g} - {row[0]['light'][1]:g}"] + [
            f"{_pct(c['recall'], 0)} / {_pct(c['false_positive_rate'], 0)} (n={c['n_defect']}+{c['n_ok']})" for c in row])
    add(_table(hdr, rows))
    add("")
    add("### Hardest normal-test examples")
    add("")
    ex = m["worst_examples"]
    hdr = ["kind", "score", "contrast", "length", "width", "polarity", "light", "blur", "noise", "look-alikes"]
    rows = []
    for kind, key in (("lowest-scored scratch", "lowest_scored_defects"), ("highest-scored ok", "highest_scored_ok")):
        for e in ex[key]:
            rows.append([kind, _f(e["score"]), _f(e["scratch_contrast"], 1) if e["scratch_contrast"] is not None else "-",
                         _f(e["scratch_length"], 0) if e["scratch_length"] is not None else "-",
                         _f(e["scratch_width"], 2) if e["scratch_width"] is not None else "-",
                         e["scratch_polarity"] or "-", _f(e["light_level"], 2), _f(e["blur_sigma"], 2),
                         _f(e["noise_sigma"], 2), ", ".join(e["distractors"]) or "none"])
    add(_table(hdr, rows))
    add("")
    add(_findings(m))
    add("")
    add("## Drift monitoring reference")
    add("")
    add(f"`reference.json` holds the training set's distribution ({D['train']:,} images, generator seed "
        f"{m['seeds']['train']}) of `brightness`, `contrast`, `sharpness` and of the model's score: fixed "
        "`bin_edges` and `counts`, `n`, `mean`, `std`, quantiles p01 - p99 and a `sample` of 2,000 raw values "
        "for KS tests. How the test sets compare with it (KS statistic against the 2,000-value sample; PSI on "
        "the reference bins):")
    add("")
    dc = m["drift_check"]
    hdr = ["variable", "reference mean", "normal: mean", "KS", "PSI", "drifted: mean", "KS", "PSI"]
    rows = []
    for var in ("brightness", "contrast", "sharpness", "score"):
        a, b = dc["normal"][var], dc["drifted"][var]
        rows.append([var, _f(a["reference_mean"], 3), _f(a["mean"], 3), _f(a["ks_statistic"], 3), _f(a["psi"], 3),
                     _f(b["mean"], 3), _f(b["ks_statistic"], 3), _f(b["psi"], 3)])
    add(_table(hdr, rows))
    add("")
    add("## Known limitations")
    add("")
    add("- Trained and evaluated on synthetic images only. Before the model gates real production it needs "
        "a labelled sample from the real line; the generator's look-alikes are plausible stand-ins, not a "
        "catalogue of what the line really produces.")
    add("- One scratch per defect image; other defect kinds (chips, cracks, dents, coating defects, "
        "bubbles) are not modelled and are out of scope: the model may score them anywhere.")
    add("- Sensitive to acquisition drift: dimmer light and defocus lower the contrast of thin scratches "
        "and the recall falls (see the drifted set and the sweep). Watch `brightness` and `sharpness` "
        "against `reference.json` and re-validate after any change of lighting, lens or camera.")
    add("- The faintest scratches (contrast near the noise level) are missed at a much higher rate than the "
        "average; the recall figure is an average over the generator's contrast mix.")
    add("- Some look-alikes are ambiguous by nature: a smudge's single dominant wipe streak can look "
        "exactly like a faint scratch, and these make most of the confident false rejects.")
    add("- Resized inputs (not 128 x 128) were never seen in training.")
    add("- Scores are not calibrated probabilities outside the training distribution.")
    add("")
    add("## Reproducibility")
    add("")
    add("```sh")
    add("training/run.sh           # venv (if missing) -> generate -> train -> export -> evaluate -> artefacts")
    add("training/run_tests.sh     # generator, features and a pipeline smoke test")
    add("```")
    add("")
    add(f"Seed {m['seed']}; {m['config']['threads']} torch threads; environment: " + ", ".join(f"{k} {v}" for k, v in m["environment"].items()) + ".")
    add("")
    cur = headline(m)
    prev = m.get("previous_run")
    if prev:
        add("This run against the previous run found in place (same command):")
        add("")
        hdr = ["set", "metric", "previous run", "this run", "difference (pp)"]
        rows = []
        worst = 0.0
        for s in ("normal", "drifted"):
            for k in HEADLINE_KEYS:
                a, b = prev[s].get(k), cur[s].get(k)
                diff = None if a is None or b is None else 100 * (b - a)
                if diff is not None:
                    worst = max(worst, abs(diff))
                rows.append([s, k, _f(a), _f(b), "-" if diff is None else f"{diff:+.2f}"])
        rows.append(["-", "thresholds", ", ".join(f"{v:.4f}" for v in (prev["thresholds"] or {}).values()),
                     ", ".join(f"{v:.4f}" for v in cur["thresholds"].values()), ""])
        rows.append(["-", "pipeline seconds", _f(prev["total_seconds"], 0), _f(cur["total_seconds"], 0), ""])
        add(_table(hdr, rows))
        add("")
        add(f"Largest difference: {worst:.2f} pp ({'within' if worst <= 0.5 else 'OUTSIDE'} the 0.5 pp tolerance).")
    else:
        add("No previous run was in place to compare with; run `training/run.sh` again to add the comparison.")
    add("")
    path.write_text("\n".join(lines))


def _findings(m: dict) -> str:
    """A few plain sentences drawn from the slices."""
    S = m["slices"]
    R = m["results"]
    out = ["Findings:", ""]
    c = S["scratch_contrast"]
    faint = [r for r in c["normal"] if r["slice"] in ("6 - 8", "8 - 10", "10 - 12")]
    faint_d = [r for r in c["drifted"] if r["slice"] in ("6 - 8", "8 - 10", "10 - 12")]
    n_f = sum(r["n_defect"] for r in faint)
    miss_f = sum(r["missed"] for r in faint)
    n_fd = sum(r["n_defect"] for r in faint_d)
    miss_fd = sum(r["missed"] for r in faint_d)
    if n_f:
        out.append(
            f"- Faint scratches (contrast below 12) make {miss_f} of the {R['normal']['fn']} misses on the normal "
            f"set: {_pct(1 - miss_f / n_f)} of them are caught, against {_pct(R['normal']['recall'])} overall; under "
            f"drift {_pct(1 - miss_fd / max(n_fd, 1))}."
        )
    dn = {r["slice"]: r for r in S["distractor"]["normal"]}
    worst = max((r for k, r in dn.items() if k in DISTRACTOR_TYPES and r["false_positive_rate"] is not None),
                key=lambda r: r["false_positive_rate"], default=None)
    if worst is not None:
        out.append(
            f"- The look-alike that fools the model most on the normal set is `{worst['slice']}` "
            f"(FPR {_pct(worst['false_positive_rate'])} on ok images that have it, against "
            f"{_pct(dn['none']['false_positive_rate'])} on clean ok images)."
        )
    out.append(
        f"- Drift (light x{m['data']['conditions']['drifted']['light_level'][0]:g}-"
        f"{m['data']['conditions']['drifted']['light_level'][1]:g}, blur sigma "
        f"{m['data']['conditions']['drifted']['blur_sigma'][0]:g}-{m['data']['conditions']['drifted']['blur_sigma'][1]:g} px) "
        f"moves recall from {_f(R['normal']['recall'])} to {_f(R['drifted']['recall'])} and precision from "
        f"{_f(R['normal']['precision'])} to {_f(R['drifted']['precision'])} on the same scenes; the sweep table "
        "shows which knob costs what."
    )
    dd = R["drifted"]["decisions"]
    out.append(
        f"- Under drift the three-way policy fails quietly: {_pct(dd['escape_rate'])} of the scratches score below "
        f"`accept_below` and would be accepted without a human look (normal set: "
        f"{_pct(R['normal']['decisions']['escape_rate'], 2)}). No single score reveals this (a missed scratch "
        "scores like a good phone); the distributions of the input features and of the scores do (see the "
        "drift check below), so a drift alarm on `brightness` or `sharpness` should stop automatic "
        "acceptance until the line is re-validated."
    )
    return "\n".join(out)
