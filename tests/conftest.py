"""Shared fixtures: tiny CIFAR-10 files in both official layouts, the real data set when present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifarlab.data import BIN_TRAIN, CLASSES, PY_TRAIN

REAL_DATA = Path(os.environ.get("CIFARLAB_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "cifar10"))


def fake_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random images (n, 3072) uint8 and labels cycling through 0-9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), np.arange(n) % 10


def write_binary(folder: Path, per_batch: int = 20, test: int = 20) -> Path:
    folder = Path(folder) / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for i, name in enumerate([*BIN_TRAIN, "test_batch.bin"]):
        images, labels = fake_batch(test if name == "test_batch.bin" else per_batch, i)
        records = np.concatenate([labels.astype(np.uint8)[:, None], images], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    return folder


def write_python(folder: Path, per_batch: int = 20, test: int = 20) -> Path:
    folder = Path(folder) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*PY_TRAIN, "test_batch"]):
        images, labels = fake_batch(test if name == "test_batch" else per_batch, i)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": images}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, f, protocol=2)
    return folder


@pytest.fixture
def tiny_binary(tmp_path) -> Path:
    """A folder holding a tiny cifar-10-batches-bin (100 training, 20 test images)."""
    write_binary(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def tiny_python(tmp_path) -> Path:
    write_python(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "cifar-10-batches-bin" / "test_batch.bin").exists():
        pytest.skip(f"real CIFAR-10 not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch run of a small paper net on tiny fake data (shared, read-only)."""
    from cifarlab.config import get_preset
    from cifarlab.train import train

    root = tmp_path_factory.mktemp("tinyrun")
    data = write_binary(root / "data", per_batch=40, test=40).parent
    config = get_preset("paper").replace(
        epochs=2, batch_size=32, val_size=20, model_options={"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}
    )
    train(config, root / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    return root / "run"
