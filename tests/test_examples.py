"""Every script in examples/ runs, on tiny fake data and tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_binary

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exdata")
    write_binary(root, per_batch=20, test=20)
    return root


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run the script as `python examples/NAME ARGS` would, in this process (no second torch import)."""
    import contextlib
    import io
    import runpy

    out = io.StringIO()
    argv, here = sys.argv, os.getcwd()
    try:
        sys.argv = [str(EXAMPLES / name), *args]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
        os.chdir(here)
    return out.getvalue()


def test_every_example_has_a_test():
    tested = {"train_and_evaluate.py", "own_model.py", "custom_loop.py", "predict_folder.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow  # quick's full-width network: over 10 s on 2 busy cores
def test_train_and_evaluate(data, tmp_path):
    out = run_example(
        "train_and_evaluate.py", "--data-dir", str(data), "--epochs", "1", "--val-size", "20", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert "test accuracy" in out and "evaluated again: {'test_accuracy'" in out and "Predictions([" in out
    assert (tmp_path / "run" / "results.json").is_file()


def test_own_model_trains_with_the_fast_recipe_and_the_cli_reports_on_it(data, tmp_path):
    out = run_example(
        "own_model.py", "--data-dir", str(data), "--epochs", "2", "--width", "4", "--batch-size", "32", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert out.splitlines()[-1].startswith("small_cnn: test accuracy")
    env = {"CIFARLAB_MODELS": "own_model", "PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(EXAMPLES.parent / "src")])}
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab", "evaluate", str(tmp_path / "run"), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 0 and "test accuracy" in done.stdout.lower(), done.stderr


def test_custom_loop(data, tmp_path):
    out = run_example("custom_loop.py", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32", "--device", "cpu", cwd=tmp_path)
    assert out.count("test accuracy") == 1


def test_predict_folder(data, tmp_path):
    from PIL import Image

    from cifarlab.data import load_cifar10
    from cifarlab.training.presets import get_preset
    from cifarlab.training.train import train

    config = get_preset("quick").replace(epochs=1, val_size=20, batch_size=32, model_options={"widths": [8, 16, 16], "stem_stride": 2})
    train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    folder = tmp_path / "photos" / "more"
    folder.mkdir(parents=True)
    for i, image in enumerate(load_cifar10(data).test_images[:3]):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    out = run_example("predict_folder.py", str(tmp_path / "run"), str(tmp_path / "photos"), cwd=tmp_path)
    assert len(out.splitlines()) == 3 and all(line.count("%") == 3 for line in out.splitlines())
