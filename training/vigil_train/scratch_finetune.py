"""Fine-tunes the serving scratch detector on the line's captured, labelled images.

    python -m vigil_train.scratch_finetune --out DIR --version 2 --dataset datasets/scratch-detector-<id> \\
        [--base models/scratch-detector/1]

The starting point is the model that serves now, read back from its ``model.onnx`` (the weights
of ``ScratchNet``; the batch norms folded into convolutions by the export become fixed affine
layers), checked against onnxruntime before anything is trained. The dataset is a directory from
``vigil dataset export --captures`` (as a retraining job gives it): its rows labelled ``ok`` or
``defect`` whose image was captured (``inputs/<sha256>``) are decoded and preprocessed as the
server does; 20% of them (chosen by prediction id) are held out. Training mixes them with
generated images of the original conditions (so the model keeps what it knew), the new images
weighing ``--new-share`` of each batch, with the batch norms' statistics frozen (a few hundred
images cannot re-estimate them). The new version is evaluated beside the base on the original
holdout (generated, normal conditions) and on the new holdout (accuracy, recall, precision, and
the share of images the base's review band would send to a person), and keeps the base's
thresholds; its drift reference describes the images it now serves (the captured ones).

Without ``--base``: ``$VIGIL_MODEL_REPOSITORY/scratch-detector/$VIGIL_BASE_VERSION`` (a
retraining job sets both: the model repository and the version serving when the job started).
Lines ``progress <0..1> <what>`` report progress to a retraining job.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import pathlib
import re
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from vigil_data import compute_features, generate, to_model_input  # noqa: E402

MODEL = "scratch-detector"
LABELS = {"ok": 0, "defect": 1}


def progress(fraction: float, what: str) -> None:
    print(f"progress {fraction:.2f} {what}", flush=True)


def base_dir(given: pathlib.Path | None) -> pathlib.Path:
    if given is not None:
        return given
    repository, version = os.environ.get("VIGIL_MODEL_REPOSITORY"), os.environ.get("VIGIL_BASE_VERSION")
    if not repository or not version:
        raise SystemExit("no base model: pass --base DIR (a version directory), or run as a retraining job")
    return pathlib.Path(repository) / MODEL / version


# --------------------------------------------------------------------------------------------
# The base model, read back from ONNX
# --------------------------------------------------------------------------------------------


def load_onnx(path: pathlib.Path):
    """``ScratchNet`` with the weights of an exported ``model.onnx`` (see ``model.py``)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from .model import ScratchNet

    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def initializer(name: str) -> np.ndarray:
        """The initializer `name`, or the one a `Sub` of the zero-mean convolution starts from."""
        if name in weights:
            return weights[name]
        node = producers.get(name)
        if node is not None and node.op_type == "Sub" and node.input[0] in weights:
            return weights[node.input[0]]
        raise ValueError(f"{path}: cannot trace the weight {name!r} to an initializer")

    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    widths = tuple(int(initializer(c.input[1]).shape[0]) for c in convs)
    if len(widths) != 4:
        raise ValueError(f"{path}: expected the 4 convolutions of ScratchNet, found {len(widths)}")
    net = ScratchNet(widths)  # type: ignore[arg-type]
    layers = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for conv_node, conv, norm in zip(convs, layers, norms):
            conv.weight.copy_(torch.from_numpy(initializer(conv_node.input[1]).copy()))
            follower = [n for n in consumers.get(conv_node.output[0], []) if n.op_type == "BatchNormalization"]
            if follower:
                scale, bias, mean, var = (weights[n] for n in follower[0].input[1:5])
                norm.weight.copy_(torch.from_numpy(scale.copy()))
                norm.bias.copy_(torch.from_numpy(bias.copy()))
                norm.running_mean.copy_(torch.from_numpy(mean.copy()))
                norm.running_var.copy_(torch.from_numpy(var.copy()))
            else:
                # Folded by the export: the convolution's bias; the norm passes it through.
                bias = initializer(conv_node.input[2]) if len(conv_node.input) > 2 else np.zeros(conv.out_channels)
                norm.weight.fill_(1.0)
                norm.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32).copy()))
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
        net.head.weight.copy_(torch.from_numpy(initializer(gemm.input[1]).copy()))
        net.head.bias.copy_(torch.from_numpy(initializer(gemm.input[2]).copy()))
    return net.eval()


def check_against_onnxruntime(net, path: pathlib.Path, x: np.ndarray) -> float:
    """The largest difference between the loaded network's scores and onnxruntime's."""
    from .pipeline import make_session, onnx_scores, torch_scores

    got = torch_scores(net, x)
    want = onnx_scores(make_session(path), x)
    diff = float(np.max(np.abs(got - want))) if len(x) else 0.0
    if not diff <= 1e-4:
        raise SystemExit(f"{path}: the network read back differs from onnxruntime by {diff:.2e}")
    return diff


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def read_dataset(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The dataset's labelled rows with a captured image: RGB uint8 images, labels (1 = defect),
    whether each is held out (20%, by its prediction id's hash), and counts of what was skipped."""
    from PIL import Image

    images, labels, held = [], [], []
    skipped = {"unlabelled": 0, "no_image": 0, "undecodable": 0}
    with open(path / "rows.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] not in LABELS:
                skipped["unlabelled"] += 1
                continue
            sha = row.get("capture", "").rsplit("/", 1)[-1]
            file = path / "inputs" / sha
            if not sha or not file.is_file():
                skipped["no_image"] += 1
                continue
            try:
                with Image.open(io.BytesIO(file.read_bytes())) as img:
                    rgb = img.convert("RGB")
                    if rgb.size != (128, 128):
                        rgb = rgb.resize((128, 128), Image.BILINEAR)
                    images.append(np.asarray(rgb, dtype=np.uint8))
            except Exception:  # noqa: BLE001 - any image the decoder refuses is skipped and counted
                skipped["undecodable"] += 1
                continue
            labels.append(LABELS[row["label"]])
            held.append(hashlib.sha256(row["prediction_id"].encode()).digest()[0] < 256 // 5)
    if not images:
        raise SystemExit(f"{path}: no row labelled ok or defect has a captured image ({skipped})")
    return (
        np.stack(images),
        np.array(labels, dtype=np.int64),
        np.array(held, dtype=bool),
        skipped,
    )


# --------------------------------------------------------------------------------------------
# Fine-tuning and evaluation
# --------------------------------------------------------------------------------------------


def freeze_batch_norms(net) -> None:
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def fine_tune(net, base_x, base_y, new_x, new_y, *, epochs: int, steps: int, new_share: float, lr: float, seed: int):
    import torch
    from torch.nn import functional as F

    from .pipeline import dihedral

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.2)
    base_x, base_y = torch.from_numpy(base_x), torch.from_numpy(base_y.astype(np.float32))
    new_x, new_y = torch.from_numpy(new_x), torch.from_numpy(new_y.astype(np.float32))
    batch, n_new = 64, max(1, round(64 * new_share))
    history = []
    for epoch in range(epochs):
        net.train()
        freeze_batch_norms(net)
        losses = []
        for _ in range(steps):
            i = torch.randint(0, len(new_y), (n_new,), generator=gen)
            j = torch.randint(0, len(base_y), (batch - n_new,), generator=gen)
            x, y = dihedral(torch.cat([new_x[i], base_x[j]]), gen), torch.cat([new_y[i], base_y[j]])
            loss = F.binary_cross_entropy_with_logits(net(x)[:, 0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses))})
        progress(0.3 + 0.45 * (epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}")
    return net.eval(), history


def evaluate(scores: np.ndarray, y: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Accuracy, recall and precision of the verdicts, and the share a person would decide."""
    predicted = scores >= thresholds["defect"]
    truth = y == 1
    tp = int(np.sum(predicted & truth))
    band = (scores >= thresholds.get("accept_below", 0.0)) & (scores < thresholds.get("reject_at", 0.0))
    return {
        "images": int(len(y)),
        "accuracy": float(np.mean(predicted == truth)) if len(y) else None,
        "recall": tp / max(int(truth.sum()), 1),
        "precision": tp / max(int(predicted.sum()), 1),
        "review_share": float(band.mean()) if len(y) else None,
    }


def thresholds_of(toml: str) -> dict[str, float]:
    """`defect`, `accept_below` and `reject_at` of a model.toml's [thresholds] (the last two optional)."""
    found = {
        key: float(m.group(1))
        for key in ("defect", "accept_below", "reject_at")
        if (m := re.search(rf"^{key}\s*=\s*([0-9.eE+-]+)", toml, re.MULTILINE))
    }
    if "defect" not in found:
        raise SystemExit("the base model.toml has no [thresholds] defect")
    return found


def with_version(toml: str, version: int) -> str:
    return re.sub(r"^version\s*=.*$", f"version = {version}", toml, count=1, flags=re.MULTILINE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the version directory to write")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--dataset", type=pathlib.Path, required=True, help="a dataset directory with inputs/")
    parser.add_argument("--base", type=pathlib.Path, help="the version directory to start from")
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument("--base-images", type=int, default=1536, help="generated images of the original conditions")
    parser.add_argument("--holdout-images", type=int, default=1000, help="the original holdout's size")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="batches of 64 per epoch")
    parser.add_argument("--new-share", type=float, default=0.5, help="the new images' share of each batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    timings: dict[str, float] = {}
    lap_started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal lap_started
        now = time.perf_counter()
        timings[name] = round(now - lap_started, 2)
        lap_started = now

    base = base_dir(args.base)
    base_onnx, base_toml = base / "model.onnx", (base / "model.toml").read_text()
    thresholds = thresholds_of(base_toml)
    progress(0.05, f"reading {args.dataset.name}")
    images, y, held, skipped = read_dataset(args.dataset)
    x = to_model_input(images)
    if (~held).sum() == 0 or held.sum() == 0:
        raise SystemExit(f"{args.dataset}: {len(y)} labelled images are too few to train on and hold out some")
    lap("read dataset")

    progress(0.1, "generating images of the original conditions")
    gen_images, gen_y, _ = generate(args.base_images + args.holdout_images, args.seed + 50, "normal", workers=2)
    gen_x = to_model_input(gen_images)
    base_x, base_y = gen_x[: args.base_images], gen_y[: args.base_images]
    hold_x, hold_y = gen_x[args.base_images :], gen_y[args.base_images :]
    lap("generate")

    progress(0.2, f"reading the base model {base}")
    import torch  # noqa: F401 - after numpy's thread settings

    from .pipeline import export_onnx, make_session, onnx_scores

    net = load_onnx(base_onnx)
    readback_diff = check_against_onnxruntime(net, base_onnx, hold_x[:64])
    base_session = make_session(base_onnx)
    before = {
        "holdout": evaluate(onnx_scores(base_session, hold_x), hold_y, thresholds),
        "new_holdout": evaluate(onnx_scores(base_session, x[held]), y[held], thresholds),
    }
    lap("load base")

    progress(0.3, f"fine-tuning on {int((~held).sum())} new images and {len(base_y)} of the original conditions")
    net, history = fine_tune(
        net,
        base_x,
        base_y,
        x[~held],
        y[~held],
        epochs=args.epochs,
        steps=args.steps,
        new_share=args.new_share,
        lr=args.lr,
        seed=args.seed,
    )
    lap("fine-tune")

    progress(0.8, "exporting to ONNX")
    args.out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export = export_onnx(net, args.out / "model.onnx", x[:16], lambda msg: None)
    session = make_session(args.out / "model.onnx")
    new_scores = onnx_scores(session, x)
    after = {
        "holdout": evaluate(onnx_scores(session, hold_x), hold_y, thresholds),
        "new_holdout": evaluate(new_scores[held], y[held], thresholds),
    }
    lap("export and evaluate")

    from .reference import build_reference

    reference = build_reference(
        compute_features(images),
        new_scores,
        model=MODEL,
        version=args.version,
        generator_seed=args.seed,
        conditions={"source": f"the captured images of {args.dataset.name}"},
    )
    (args.out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
    (args.out / "model.toml").write_text(with_version(base_toml, args.version))
    metrics = {
        "base": str(base),
        "dataset": args.dataset.name,
        "training_data": f"{int((~held).sum())} captured images of {args.dataset.name} + "
        f"{len(base_y)} generated (normal conditions, seed {args.seed + 50})",
        "new_images": int(len(y)),
        "new_held_out": int(held.sum()),
        "skipped_rows": skipped,
        "thresholds": thresholds,
        "base_readback_max_abs_diff": readback_diff,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "new_share": args.new_share,
        "history": history,
        "export": export,
        "before": before,
        "holdout": after["holdout"],
        "new_holdout": after["new_holdout"],
        "accuracy": after["new_holdout"]["accuracy"],
        "seconds": timings,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    progress(0.95, "written")
    print(json.dumps({k: metrics[k] for k in ("training_data", "before", "holdout", "new_holdout", "seconds")}))


if __name__ == "__main__":
    main()
