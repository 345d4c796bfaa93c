"""End to end: generate -> train -> export -> evaluate -> model card, reference, plots, samples.

    python -m vigil_train.pipeline --out ../models/scratch-detector/1 --samples ../samples

Everything derives from one seed: the data are reproduced bit for bit, and with the same torch
thread count (2) and deterministic algorithms so are the trained weights and every metric.
``--card-only`` re-renders MODEL_CARD.md from an existing metrics.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# Thread behaviour must be set before numpy / torch start their thread pools (see env.sh).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from vigil_data import Conditions, compute_features, generate, to_model_input

MODEL_NAME = "scratch-detector"
MODEL_VERSION = 1


@dataclass
class Config:
    seed: int = 20240607
    n_train: int = 12000
    n_val: int = 3000
    n_test: int = 3000  # each of the normal and the drifted test sets
    n_sweep: int = 2000
    epochs: int = 6
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    widths: tuple[int, int, int, int] = (16, 16, 32, 64)
    threads: int = 2
    target_recall: float = 0.98  # shipped threshold: recall on the validation split
    accept_recall: float = 0.995  # accept_below: recall on the validation split
    reject_precision: float = 0.995  # reject_at: precision on the validation split
    n_samples: int = 24
    smoke: bool = False

    def seeds(self) -> dict[str, int]:
        # The normal and the drifted test sets share a seed: the same scenes (phones, scratches,
        # look-alikes) under the two conditions, so their difference is the drift alone.
        s = self.seed
        return {"train": s, "val": s + 1, "test": s + 2, "sweep": s + 3, "samples": s + 4}


SMOKE = dict(n_train=384, n_val=256, n_test=256, n_sweep=128, epochs=1, n_samples=4, smoke=True)

#: The sweep set spans both presets and beyond, to map recall/FPR against light and blur.
SWEEP_CONDITIONS = Conditions.preset("normal").with_overrides(
    name="sweep", light_level=(0.40, 1.20), blur_sigma=(0.3, 3.0)
)


class Log:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    x: np.ndarray  # float32 [N, 1, 128, 128], model input
    labels: np.ndarray  # int64 [N]
    params: list[dict]
    features: dict[str, np.ndarray]
    images: Optional[np.ndarray] = None  # RGB uint8, kept only where needed
    scores: Optional[np.ndarray] = None


def make_set(name: str, n: int, seed: int, conditions: Any, log: Log, keep_images: bool = False) -> DataSet:
    t = time.perf_counter()
    images, labels, params = generate(n, seed, conditions, workers=2)
    dt = time.perf_counter() - t
    x = np.concatenate([to_model_input(images[i : i + 1024]) for i in range(0, n, 1024)])
    feats = compute_features(images)
    log(f"  {name}: {n} images ({labels.mean():.1%} defect) in {dt:.1f}s ({n / max(dt, 1e-9):.0f} img/s)")
    return DataSet(name, x, labels, params, feats, images if keep_images else None)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def set_determinism(cfg: Config) -> None:
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True)


def torch_scores(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(torch.sigmoid(model(torch.from_numpy(x[i : i + batch]))).numpy()[:, 0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def dihedral(x: Any, gen: Any) -> Any:
    """One random flip / transpose of a whole batch [N, 1, H, W] (the generator is symmetric
    under them), drawn from the torch generator ``gen``."""
    import torch

    k = int(torch.randint(0, 8, (1,), generator=gen))
    if k & 1:
        x = x.flip(3)
    if k & 2:
        x = x.flip(2)
    if k & 4:
        x = x.transpose(2, 3)
    return x


def train(cfg: Config, train_set: DataSet, val_set: DataSet, log: Log) -> tuple[Any, dict]:
    import torch
    from torch.nn import functional as F

    from .metrics import roc_auc
    from .model import ScratchNet, count_parameters

    set_determinism(cfg)
    model = ScratchNet(cfg.widths)
    n = len(train_set.labels)
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed + 100)
    x_all = torch.from_numpy(train_set.x)
    y_all = torch.from_numpy(train_set.labels.astype(np.float32))
    log(
        f"train: ScratchNet{tuple(cfg.widths)} ({count_parameters(model):,} parameters), {n} images x "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, AdamW one-cycle lr {cfg.lr}, {cfg.threads} threads"
    )
    history = []
    t_train = time.perf_counter()
    report_every = max(1, steps_per_epoch // 4)
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        t_epoch = time.perf_counter()
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, y = dihedral(x_all[idx], gen), y_all[idx]
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(idx)
            run_n += len(idx)
            if (b + 1) % report_every == 0 or b + 1 == steps_per_epoch:
                rate = run_n / max(time.perf_counter() - t_epoch, 1e-9)
                log(
                    f"  epoch {epoch + 1}/{cfg.epochs} step {b + 1}/{steps_per_epoch} "
                    f"loss {run_loss / run_n:.4f} ({rate:.0f} img/s)"
                )
        val_scores = torch_scores(model, val_set.x)
        eps = 1e-7
        yv = val_set.labels
        val_loss = float(
            -np.mean(yv * np.log(np.clip(val_scores, eps, 1)) + (1 - yv) * np.log(np.clip(1 - val_scores, eps, 1)))
        )
        auc = roc_auc(val_scores, yv)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": run_loss / max(run_n, 1),
                "val_loss": val_loss,
                "val_roc_auc": auc,
                "seconds": time.perf_counter() - t_epoch,
            }
        )
        log(f"  epoch {epoch + 1}: train loss {run_loss / max(run_n, 1):.4f}, val loss {val_loss:.4f}, val ROC AUC {auc:.4f}")
    train_s = time.perf_counter() - t_train
    model.eval()
    info = {
        "architecture": f"ScratchNet{tuple(cfg.widths)}",
        "parameters": count_parameters(model),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": f"AdamW (weight decay {cfg.weight_decay}), one-cycle LR, max {cfg.lr}",
        "augmentation": "random flips / transposes (per batch)",
        "train_seconds": train_s,
        "train_images_per_s": n * cfg.epochs / max(train_s, 1e-9),
        "history": history,
    }
    return model, info


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_onnx(model: Any, path: Path, check_x: np.ndarray, log: Log) -> dict:
    import onnx
    import torch

    from .model import WithSigmoid

    wrapper = WithSigmoid(model).eval()
    dummy = torch.zeros(2, 1, 128, 128, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # dynamo=False is deliberate (TorchScript exporter, opset 17); silence its deprecation notes.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(torch, wrapper, dummy, path)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    sess = make_session(path)
    with torch.no_grad():
        ref = wrapper(torch.from_numpy(check_x)).numpy()
    got = sess.run(["defect_probability"], {"image": check_x})[0]
    if got.shape != ref.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
    max_diff = float(np.max(np.abs(got - ref)))
    # Dynamic batch: a single item and an odd batch give the same scores.
    one = sess.run(None, {"image": check_x[:1]})[0]
    odd = sess.run(None, {"image": check_x[:7]})[0]
    max_diff = max(max_diff, float(np.max(np.abs(one - ref[:1]))), float(np.max(np.abs(odd - ref[:7]))))
    if not max_diff <= 1e-5:
        raise AssertionError(f"onnxruntime differs from PyTorch by {max_diff:.2e} (> 1e-5)")
    log(f"export: {path.name} ({path.stat().st_size / 1024:.0f} KiB), onnxruntime vs PyTorch on {len(check_x)} images: max |diff| {max_diff:.2e}")
    return {
        "opset": 17,
        "bytes": path.stat().st_size,
        "check_batch": int(len(check_x)),
        "max_abs_diff_vs_pytorch": max_diff,
        "onnx_input": [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim],
        "onnx_output": [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim],
    }


def _export(torch: Any, wrapper: Any, dummy: Any, path: Path) -> None:
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["defect_probability"],
        dynamic_axes={"image": {0: "batch"}, "defect_probability": {0: "batch"}},
        dynamo=False,
        opset_version=17,
        do_constant_folding=True,
    )


def make_session(path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def onnx_scores(sess: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [sess.run(["defect_probability"], {"image": x[i : i + batch]})[0][:, 0] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run(cfg: Config, out_dir: Path, samples_dir: Path, gate: bool = True) -> dict:
    from . import metrics as M
    from . import report
    from .reference import build_reference

    log = Log()
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = report.load_previous_metrics(out_dir / "metrics.json")
    seeds = cfg.seeds()
    log(f"vigil scratch-detector pipeline: seed {cfg.seed}{' (smoke)' if cfg.smoke else ''} -> {out_dir}")

    # 1. Data.
    t = time.perf_counter()
    log("generate:")
    normal = Conditions.preset("normal")
    drifted = Conditions.preset("drifted")
    train_set = make_set("train (normal)", cfg.n_train, seeds["train"], normal, log)
    val_set = make_set("validation (normal)", cfg.n_val, seeds["val"], normal, log)
    test_sets = {
        "normal": make_set("test normal", cfg.n_test, seeds["test"], normal, log),
        "drifted": make_set("test drifted (dim + blur)", cfg.n_test, seeds["test"], drifted, log),
        "sweep": make_set("sweep (light 0.4-1.2, blur 0.3-3.0)", cfg.n_sweep, seeds["sweep"], SWEEP_CONDITIONS, log),
    }
    timing["generate"] = time.perf_counter() - t
    gen_rate = report.generator_speed(log)

    # 2. Train.
    t = time.perf_counter()
    model, train_info = train(cfg, train_set, val_set, log)
    timing["train"] = time.perf_counter() - t

    # 3. Export + check.
    t = time.perf_counter()
    onnx_path = out_dir / "model.onnx"
    export_info = export_onnx(model, onnx_path, test_sets["normal"].x[:64], log)
    timing["export"] = time.perf_counter() - t

    # 4. Evaluate (with the exported model, as served).
    t = time.perf_counter()
    sess = make_session(onnx_path, cfg.threads)
    for ds in (train_set, val_set, *test_sets.values()):
        ds.scores = onnx_scores(sess, ds.x)
    log(f"evaluate: scored {sum(len(d.labels) for d in (train_set, val_set, *test_sets.values()))} images with onnxruntime")

    yv, sv = val_set.labels, val_set.scores
    defect_t = M.floor_to(M.threshold_for_recall(sv, yv, cfg.target_recall), 4)
    accept_below = min(M.floor_to(M.threshold_for_recall(sv, yv, cfg.accept_recall), 4), defect_t)
    reject_at = max(M.ceil_to(M.threshold_for_precision(sv, yv, cfg.reject_precision), 4), defect_t)
    thresholds = {"defect": defect_t, "accept_below": accept_below, "reject_at": reject_at}
    log(f"thresholds (from validation): defect {defect_t}, accept_below {accept_below}, reject_at {reject_at}")

    results: dict[str, Any] = {}
    for name, ds in [("validation", val_set), *test_sets.items()]:
        r = M.binary_metrics(ds.scores, ds.labels, defect_t)
        r["decisions"] = M.decision_counts(ds.scores, ds.labels, accept_below, reject_at)
        results[name] = r
    for name in ("normal", "drifted"):
        r = results[name]
        log(
            f"  {name:8s}: accuracy {r['accuracy']:.4f} precision {r['precision']:.4f} recall {r['recall']:.4f} "
            f"ROC AUC {r['roc_auc']:.4f} | review {r['decisions']['review_rate']:.1%}"
        )
    slices = report.error_slices(test_sets, defect_t)
    drift_check = report.drift_check(train_set, test_sets)
    examples = report.worst_examples(test_sets["normal"], defect_t)
    timing["evaluate"] = time.perf_counter() - t

    # 5. Artefacts.
    t = time.perf_counter()
    reference = build_reference(
        train_set.features,
        train_set.scores,
        model=MODEL_NAME,
        version=MODEL_VERSION,
        generator_seed=seeds["train"],
        conditions=normal.as_dict(),
    )
    (out_dir / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    report.write_model_toml(out_dir / "model.toml", thresholds)
    report.plot_pr(out_dir / "pr_curve.png", test_sets, thresholds)
    sample_rows = report.write_samples(samples_dir, cfg, seeds["samples"], sess, thresholds, log)
    timing["artefacts"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t_start

    acceptance = {
        "criterion": "normal test set at the shipped threshold: recall >= 0.97 and precision >= 0.95",
        "recall": results["normal"]["recall"],
        "precision": results["normal"]["precision"],
        "passed": bool(results["normal"]["recall"] >= 0.97 and results["normal"]["precision"] >= 0.95),
    }
    metrics = {
        "model": MODEL_NAME,
        "version": MODEL_VERSION,
        "seed": cfg.seed,
        "seeds": seeds,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "data": {
            "train": len(train_set.labels),
            "validation": len(val_set.labels),
            **{k: len(v.labels) for k, v in test_sets.items()},
            "conditions": {
                "normal": normal.as_dict(),
                "drifted": drifted.as_dict(),
                "sweep": SWEEP_CONDITIONS.as_dict(),
            },
            "defect_rate_train": float(train_set.labels.mean()),
        },
        "thresholds": thresholds,
        "threshold_policy": {
            "defect": f"highest threshold with recall >= {cfg.target_recall} on the validation split (floored to 4 decimals)",
            "accept_below": f"highest threshold with recall >= {cfg.accept_recall} on the validation split",
            "reject_at": f"lowest threshold with precision >= {cfg.reject_precision} on the validation split",
        },
        "results": results,
        "acceptance": acceptance,
        "slices": slices,
        "drift_check": drift_check,
        "worst_examples": examples,
        "training": train_info,
        "export": export_info,
        "generator_images_per_s": gen_rate,
        "timing_s": timing,
        "environment": report.environment(),
        "samples": {"n": len(sample_rows), "dir": str(samples_dir.name)},
    }
    metrics["previous_run"] = report.headline(previous) if previous else None
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=report.json_default) + "\n")
    report.write_card(out_dir / "MODEL_CARD.md", metrics)
    log(f"wrote {', '.join(sorted(p.name for p in out_dir.iterdir()))} and {len(sample_rows)} samples")
    log(
        f"ACCEPTANCE {'PASS' if acceptance['passed'] else 'FAIL'}: normal recall {acceptance['recall']:.4f} (>= 0.97), "
        f"precision {acceptance['precision']:.4f} (>= 0.95); total {timing['total']:.0f}s"
    )
    if gate and not acceptance["passed"]:
        raise SystemExit(2)
    return metrics


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[2]
    p.add_argument("--out", type=Path, default=here / "models" / MODEL_NAME / str(MODEL_VERSION), help="model version directory")
    p.add_argument("--samples", type=Path, default=here / "samples", help="sample images directory")
    p.add_argument("--seed", type=int, default=Config.seed, help="master seed (default %(default)s)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {Config.epochs})")
    p.add_argument("--n-train", type=int, help=f"training images (default {Config.n_train})")
    p.add_argument("--smoke", action="store_true", help="tiny data, one epoch (tests)")
    p.add_argument("--card-only", action="store_true", help="re-render MODEL_CARD.md from --out/metrics.json")
    p.add_argument("--no-gate", action="store_true", help="exit 0 even if the acceptance check fails")
    a = p.parse_args(argv)
    if a.card_only:
        from .report import write_card

        write_card(a.out / "MODEL_CARD.md", json.loads((a.out / "metrics.json").read_text()))
        return 0
    cfg = Config(seed=a.seed, **(SMOKE if a.smoke else {}))
    if a.epochs is not None:
        cfg.epochs = a.epochs
    if a.n_train is not None:
        cfg.n_train = a.n_train
    run(cfg, a.out.resolve(), a.samples.resolve(), gate=not (a.no_gate or a.smoke))
    return 0


if __name__ == "__main__":
    sys.exit(main())
