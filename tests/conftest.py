"""Shared fixtures: tiny CIFAR-10 files in both official layouts, the real data set when present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifarlab.data import ANY_RECORD_COUNT_ENV, BIN_TRAIN, CLASSES, PY_TRAIN

# The fake data sets below hold tens of images per file, not the official 10,000; this lets them load,
# here and in the torchrun and CLI subprocesses that inherit the environment. Tests of the real count
# remove it with monkeypatch.delenv.
os.environ[ANY_RECORD_COUNT_ENV] = "1"

# Resolved: tests link to its files from temporary folders, where a relative path (the README's ../shared) would dangle.
REAL_DATA = Path(os.environ.get("CIFARLAB_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "cifar10")).resolve()


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


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` show as skipped, with the reason, where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(needs_cuda)


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
    """A finished 2-epoch run of a small paper net on tiny fake data (shared, read-only).

    Trained under bf16 autocast on every machine (emulated, only slower, without native bf16), so
    evaluate, predict, serve and export are checked on a bf16-trained model, inferring in float32.
    """
    from cifarlab.training.presets import get_preset
    from cifarlab.training.train import train

    root = tmp_path_factory.mktemp("tinyrun")
    data = write_binary(root / "data", per_batch=40, test=40).parent
    config = get_preset("paper").replace(
        epochs=2, batch_size=32, val_size=20, amp="bf16", model_options={"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}
    )
    train(config, root / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    return root / "run"


@pytest.fixture(scope="session")
def browser():
    """A headless system Chromium driven by Playwright (no browser download); skips when either is missing."""
    import shutil

    playwright = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.skip("no chromium browser installed")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=args)
        yield chromium
        chromium.close()


def open_page(browser, html: Path, screenshot: Path) -> dict:
    """Load a page from its file URL; return console errors, failed requests, image widths and text; keep a screenshot."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(Path(html).resolve().as_uri())
    page.wait_for_load_state("load")
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    requests = page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    text = page.inner_text("body")
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return {"errors": errors, "failed": failed, "widths": widths, "text": text, "requests": requests}
