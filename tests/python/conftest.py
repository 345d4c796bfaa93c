"""Fixtures: a real vigil-edge process on loopback, the shipped model, the sample images."""

import os
import pathlib
import re
import subprocess
import tempfile
import tomllib

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("VIGIL_BIN_DIR", ROOT / "target" / "debug"))
MODEL = "scratch-detector"


def model_dir() -> pathlib.Path:
    versions = sorted((int(p.name), p) for p in (ROOT / "models" / MODEL).iterdir() if p.name.isdigit())
    return versions[-1][1]


@pytest.fixture(scope="session")
def model_config() -> dict:
    with open(model_dir() / "model.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="session")
def onnx_session():
    import onnxruntime

    return onnxruntime.InferenceSession(str(model_dir() / "model.onnx"), providers=["CPUExecutionProvider"])


def sample_files(*sets: str) -> list[pathlib.Path]:
    return [p for s in sets for p in sorted((ROOT / "samples" / s).glob("*.png"))]


def preprocess(path: pathlib.Path, config: dict) -> np.ndarray:
    """The model.toml recipe, written independently of the server: [1, 1, H, W] float32."""
    pre = config["preprocess"]
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert rgb.shape[:2] == (pre["height"], pre["width"]), "samples are at model size"
    gray = (0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]) / 255.0
    x = (gray - pre["mean"]) / pre["std"]
    return x.astype(np.float32)[None, None, :, :]


def start_edge(repository: pathlib.Path, *extra: str):
    """Starts vigil-edge on `repository` and a free loopback port (with `extra` flags); returns
    (process, 'host:port', log path)."""
    binary = BIN_DIR / "vigil-edge"
    if not binary.exists():
        pytest.fail(f"{binary} not built; run ./dev test")
    log = tempfile.NamedTemporaryFile(prefix="vigil-edge-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--model-repository", repository, *extra],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"vigil-edge did not start: {line!r}\n{pathlib.Path(log.name).read_text()}")
    return proc, match.group(1), pathlib.Path(log.name)


def stop_edge(proc, log: pathlib.Path):
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.fixture(scope="session")
def edge_server():
    """vigil-edge on the shipped model repository; yields 'host:port'."""
    proc, address, log = start_edge(ROOT / "models")
    yield address
    stop_edge(proc, log)
