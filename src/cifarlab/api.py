"""cifarlab's public Python API: train a preset, read a run, load a model and predict.

A thin layer over the same internals the command line calls, so `cifarlab.train` and `cifarlab
train` make the same run directory, and `Model.predict` and `cifarlab predict` the same numbers.
Everything here is exported from `cifarlab` itself; the modules behind it are internal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cifarlab.common.rundir import CHECKPOINT, RunDir, RunError
from cifarlab.inference.inputs import as_model_input
from cifarlab.inference.model import Predictor, data_dir_for
from cifarlab.training.config import TrainConfig, apply_overrides
from cifarlab.training.presets import get_preset


def default_run_path(preset: str) -> Path:
    """runs/PRESET-TIMESTAMP, the folder `cifarlab train` makes when --out is not given."""
    return Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_config(preset: str = "fast", **settings: Any) -> TrainConfig:
    """A preset's config with `settings` (config fields, or "model_options.NAME") applied and checked
    exactly as `cifarlab train --set` checks them: an unknown field or a bad value is a ConfigError."""
    return apply_overrides(get_preset(preset), settings, source="settings")


def train(
    preset: str = "fast",
    *,
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
    train_subset: int | None = None,
    quiet: bool = False,
    **settings: Any,
) -> Run:
    """Train a preset into a new run directory and return the finished `Run`.

    `settings` are config fields (`epochs=1`, `lr=0.5`, `model="resnet18"`, `model_options={...}`;
    `cifarlab.config_fields()` or `cifarlab presets` lists them), checked as `--set` checks them.
    `out` defaults to runs/PRESET-TIMESTAMP, `data_dir` to $CIFARLAB_DATA or ~/.cache/cifarlab
    (downloaded when absent); `train_subset` keeps only the first N training images. `quiet`
    silences the start, epoch and result lines. Ctrl-C stops the run; `Run.resume()` continues it.

        run = cifarlab.train("quick", epochs=1, train_subset=2000, data_dir="data")
        print(run.results["test_accuracy"])
    """
    from cifarlab.training.train import train as train_config

    config = make_config(preset, **settings)
    out = Path(out) if out is not None else default_run_path(config.preset)
    train_config(
        config, out, train_subset=train_subset, data_dir=data_dir, device=device, progress=not quiet, log=(lambda line: None) if quiet else print
    )
    return Run(out)


class Run:
    """A run directory, read for a notebook: its config, metrics per epoch, results and status.

    Every property reads the files again, so a `Run` of a training in progress shows its latest epoch.
    """

    def __init__(self, path: Path | str):
        self._run = RunDir(path).require()
        self.path = self._run.path

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status['status']!r}, epochs={len(self.metrics)})"

    @property
    def config(self) -> TrainConfig:
        """The resolved training config the run was started with."""
        return TrainConfig.from_dict(self._run.config()["train"], source=self._run.describe_config())

    @property
    def facts(self) -> dict[str, Any]:
        """What config.json records besides the config: data folder, device, dtype, image counts, parameters."""
        return {k: v for k, v in self._run.config().items() if k != "train"}

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One record per finished epoch (epoch, lr, train/val loss and accuracy, seconds)."""
        return self._run.metrics()[0]

    @property
    def results(self) -> dict[str, Any] | None:
        """results.json (test accuracy, per-class accuracy, timing), or None before the run finished."""
        return self._run.results()

    @property
    def status(self) -> dict[str, Any]:
        """status.json: {"status": "running" | "finished" | "stopped" | "failed", "epoch": ..., ...}."""
        return self._run.status()

    def load(self, **options: Any) -> Model:
        """The run's model (its last checkpoint); options as for `cifarlab.load`."""
        return load(self.path, **options)

    def resume(self, *, data_dir: Path | str | None = None, device: str = "auto", quiet: bool = False) -> Run:
        """Continue a stopped run from its last checkpoint to its end, as if it had never stopped.
        The data is the run's own (config.json records its folder) unless `data_dir` is given."""
        from cifarlab.training.train import resume

        data_dir = data_dir_for(data_dir, self.path / CHECKPOINT)
        resume(self.path, data_dir=data_dir, device=device, progress=not quiet, log=(lambda line: None) if quiet else print)
        return self


@dataclass(frozen=True)
class Predictions:
    """What `Model.predict` returns for N images: the top class of each and every class's probability."""

    classes: list[str]  # the most probable class of each image
    probabilities: torch.Tensor  # float32 (N, number of classes), rows sum to 1
    logits: torch.Tensor  # float32 (N, number of classes), before the softmax (and any temperature)
    class_names: tuple[str, ...]  # the columns of probabilities and logits

    @property
    def confidence(self) -> list[float]:
        """The probability of each image's top class."""
        return self.probabilities.max(dim=1).values.tolist()

    def top_k(self, k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most probable (class, probability) pairs of each image, as `cifarlab predict` lists them."""
        values, indices = self.probabilities.topk(min(k, len(self.class_names)), dim=1)
        return [[(self.class_names[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())] for row_i, row_p in zip(indices, values)]

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(zip(self.classes, self.confidence))

    def __repr__(self) -> str:
        shown = ", ".join(f"{c} {p:.1%}" for c, p in list(self)[:8])
        return f"Predictions([{shown}{', ...' if len(self) > 8 else ''}])"


class Model:
    """A trained model with its preprocessing: from a run, a checkpoint or a safetensors export.

    It is the loaded-model class `cifarlab evaluate`, predict and serve use, so its numbers are theirs.
    """

    def __init__(self, predictor: Predictor):
        self._predictor = predictor

    def __repr__(self) -> str:
        return f"Model({self.name!r}, epoch={self._predictor.epoch}, from {str(self.source)!r})"

    @property
    def name(self) -> str:
        """The registered model name the network was built from."""
        return str(self._predictor.meta["model"])

    @property
    def source(self) -> Path:
        """The checkpoint or model.safetensors the weights came from."""
        return self._predictor.checkpoint

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the network's outputs."""
        return list(self._predictor.classes)

    @property
    def network(self) -> nn.Module:
        """The PyTorch module itself (expects normalised float input; `predict` does that for you)."""
        return self._predictor.model

    def logits(self, images: Any, tta: int = 0) -> torch.Tensor:
        """float32 logits (N, classes) for images in any form `predict` takes."""
        return self._predictor.logits(as_model_input(images), tta)

    def predict(self, images: Any, tta: int = 0) -> Predictions:
        """Classify images: file paths, PIL images, uint8 numpy arrays (H, W, 3) or tensors (3, 32, 32)
        / (N, 3, 32, 32), one or a list. Other sizes are centre-cropped and resized exactly as
        `cifarlab predict` does; `tta` 1 adds flips, 2 also 1-pixel translations."""
        logits = self.logits(images, tta)
        probabilities = self._predictor.probabilities(logits)
        top = probabilities.argmax(dim=1).tolist()
        return Predictions([self.classes[i] for i in top], probabilities, logits, tuple(self.classes))

    def evaluate(self, data_dir: Path | str | None = None, tta: int | None = None) -> dict[str, float]:
        """Test accuracy and loss on CIFAR-10's 10,000 test images (the run's own data unless
        `data_dir` is given); `tta` defaults to the run's own, as results.json used. Writes no file."""
        from cifarlab.common.metrics import score
        from cifarlab.data import load_cifar10

        tta = self._predictor.trained_tta if tta is None else tta
        data = load_cifar10(data_dir_for(data_dir, self._predictor.checkpoint))
        result = score(self._predictor.logits(data.test_images, tta), data.test_labels, len(self.classes))
        return {"test_accuracy": result.accuracy, "test_loss": result.loss, "test_images": len(data.test_labels), "tta": tta}


def load(path: Path | str, *, device: str = "cpu", calibrated: bool = False, amp: str = "off", batch_size: int = 256) -> Model:
    """Load a model from a run directory, a checkpoint file or a `cifarlab export --format safetensors`
    folder. `calibrated` divides logits by the temperature `cifarlab calibrate` stored; `amp="bf16"`
    infers under bfloat16 autocast (float32 by default, the numbers of `cifarlab predict`).

        model = cifarlab.load("runs/quick-1")
        print(model.predict(["cat.png"]).classes)
    """
    if not Path(path).exists():
        raise RunError(f"{path}: no such run, checkpoint or export")
    return Model(Predictor(path, device=device, batch_size=batch_size, amp=amp, calibrated=calibrated))


def register_model(name: str, builder: Callable[..., nn.Module] | None = None) -> Any:
    """Register a network under `name`, so `create_model`, `train(model=name)`, every preset's recipe,
    `load`, report, export and serve build it. Use as a decorator or a call:

        @cifarlab.register_model("tiny")
        def tiny(num_classes: int = 10, width: int = 16) -> nn.Module: ...

    The builder takes the model's options as keyword arguments (`model_options` in a config) and
    returns a module mapping normalised (N, 3, 32, 32) images to (N, num_classes) logits. The
    command line finds a model registered in a module named in $CIFARLAB_MODELS (or in an entry
    point of the group `cifarlab.models`), which it imports before building a model.
    """
    from cifarlab.models import register

    if builder is None:
        return register(name)
    return register(name)(builder)


def config_fields() -> dict[str, Any]:
    """Every config field and its default, for `train(**settings)` (per preset: `cifarlab presets`)."""
    return TrainConfig().to_dict()
