"""Line-camera images as PNG files, for the scenarios and demos that play the phone line.

    python -m vigil_data.images --n 600 --seed 7 --conditions drifted --out DIR

writes ``DIR/<index>_<ok|defect>.png`` (the generator's truth in the name) and prints one JSON
line: the conditions, the count and the defect share.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from .generator import generate


def write_pngs(images: np.ndarray, labels: np.ndarray, out: pathlib.Path) -> list[pathlib.Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = out / f"{i:05d}_{'defect' if label else 'ok'}.png"
        Image.fromarray(image, mode="RGB").save(path, format="PNG")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--conditions", choices=["normal", "drifted"], default="normal")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    images, labels, _ = generate(args.n, args.seed, args.conditions, workers=2)
    write_pngs(images, labels, args.out)
    print(json.dumps({"conditions": args.conditions, "images": args.n, "defect_share": float(labels.mean()) if args.n else 0.0}))


if __name__ == "__main__":
    main()
