"""One loaded model: a checkpoint's network with its preprocessing, turning uint8 images into logits.

Every inference path goes through this class and `common.metrics.predict_logits`: `cifarlab
evaluate`, predict, serve, the report's error analysis and the export check. So a 32x32 PNG of a
test image gets exactly the logits `evaluate` computes for it, on any machine: inference computes
in float32 unless bf16 autocast is asked for, whatever dtype the run trained in.

The model comes from a run directory, a checkpoint file, or a folder exported with
`cifarlab export --format safetensors` (common/exported.py reads it into a checkpoint's shape).

A temperature (`cifarlab calibrate` fits one on the run's validation split) divides the logits
before the softmax: it changes the probabilities, never the logits or the ranking of classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cifarlab.common.exported import check_weight_dtypes, is_export, load_model_state, model_file
from cifarlab.common.files import RunError
from cifarlab.common.metrics import predict_logits
from cifarlab.common.rundir import CALIBRATION, RunDir
from cifarlab.errors import CifarlabError
from cifarlab.models.checkpoint import model_from_checkpoint
from cifarlab.runtime import memory_format, resolve_device, use_amp


class TopKError(CifarlabError, ValueError):
    """A number of classes to show outside 1..the model's classes (predict --top-k, serve ?top_k=)."""


class NonFiniteProbabilities(CifarlabError, ArithmeticError):
    """The model's probabilities for an image are not finite numbers (broken weights or temperature)."""


class Predictor:
    """A checkpoint's (or an export's) model with its preprocessing, ready to turn uint8 images into logits."""

    def __init__(
        self,
        checkpoint: Path | str,
        device: str = "cpu",
        batch_size: int = 256,
        amp: str = "off",
        temperature: float | None = None,
        calibrated: bool = False,
    ):
        """`temperature` divides the logits before the softmax; `calibrated` takes the one the run's
        calibration.json holds instead (a RunError when the run has none for this checkpoint)."""
        if calibrated and temperature is not None:
            raise ValueError("give a temperature or calibrated=True, not both")
        self.checkpoint = model_file(checkpoint)  # checkpoint.pt, or an export's model.safetensors
        self.state = load_model_state(self.checkpoint)
        model, self.meta = model_from_checkpoint(self.state, str(self.checkpoint))
        check_weight_dtypes(self.state["model"], model.state_dict(), self.checkpoint, exact=is_export(self.checkpoint))
        self.device = resolve_device(device)
        self.channels_last = bool(self.meta.get("channels_last", False))
        # float32 unless asked: the same logits as `evaluate` and the export check on any CPU
        self.amp = use_amp(amp, self.device)
        # torch's overloads of Module.to omit memory_format, which it takes (and applies to 4-d weights)
        self.model = model.to(self.device, memory_format=memory_format(self.channels_last))  # type: ignore[call-overload]
        self.classes: list[str] = list(self.meta["classes"])
        self.batch_size = batch_size
        self.temperature = stored_temperature(self.checkpoint, self.epoch) if calibrated else temperature

    @property
    def epoch(self) -> int | None:
        return self.state.get("epoch")

    @property
    def trained_tta(self) -> int:
        """The test-time augmentation the run was configured with (results.json used it)."""
        return self.state.get("config", {}).get("tta", 0)

    def logits(self, images: torch.Tensor, tta: int = 0) -> torch.Tensor:
        """float32 logits on the CPU for uint8 images (N, 3, 32, 32), in batches of `batch_size`."""
        return predict_logits(
            self.model,
            images.to(self.device),
            self.meta["mean"],
            self.meta["std"],
            batch_size=self.batch_size,
            tta=tta,
            amp=self.amp,
            channels_last=self.channels_last,
        ).cpu()

    def check_top_k(self, k: int, name: str = "--top-k") -> int:
        """`k` if it is a number of classes this model can show, else a TopKError naming `name`."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self.classes):
            raise TopKError(f"{name} {k}: must be from 1 to {len(self.classes)} (the model's number of classes)")
        return k

    def top_k(self, logits: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """The k most probable (class, probability) pairs of each row of logits."""
        probs = self.probabilities(logits)
        values, indices = probs.topk(self.check_top_k(k), dim=1)
        return [[(self.classes[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())] for row_i, row_p in zip(indices, values)]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits, divided by the temperature first when there is one."""
        logits = logits.float()
        probs = F.softmax(logits if self.temperature is None else logits / self.temperature, dim=1)
        if not torch.isfinite(probs).all():
            scaled = "" if self.temperature is None else f" divided by temperature {self.temperature:g}"
            raise NonFiniteProbabilities(
                f"{self.checkpoint}: the model's logits{scaled} give probabilities that are "
                "not finite numbers (NaN or infinite weights, or a broken temperature)"
            )
        return probs


def stored_temperature(checkpoint: Path, epoch: int | None) -> float:
    """The temperature `cifarlab calibrate` stored beside this checkpoint, fitted on this epoch's model.

    A temperature fitted on another epoch (the run was resumed or retrained since) would be wrong
    for this model, so it is refused as a missing one is, with the command that fits a new one.
    """
    run = RunDir(checkpoint.parent)
    calibration = run.calibration()
    fit = f"run `cifarlab calibrate {run.path}` to fit one on its validation split"
    if calibration is None:
        raise RunError(f"{run.path}: no {CALIBRATION}; {fit}")
    if calibration.get("epoch") != epoch:
        raise RunError(f"{run.file(CALIBRATION)}: fitted on the epoch-{calibration.get('epoch')} checkpoint, this is epoch {epoch}; {fit}")
    return float(calibration["temperature"])  # within TEMPERATURE_RANGE: calibration.json's schema checks it on read


def run_data_dir(ckpt: Path) -> Path | None:
    """The data set a checkpoint's run trained on (config.json records its folder or archive), if still there."""
    run = RunDir(ckpt.parent)
    if not run.exists():
        return None
    try:
        data = run.config().get("data")
    except RunError:
        return None
    # The recorded folder or archive itself, not its parent: find_dataset takes either, and parquet
    # files may lie in the data folder's root, whose parent holds no data set.
    return Path(data) if isinstance(data, str) and Path(data).exists() else None


def data_dir_for(data_dir: Path | str | None, ckpt: Path) -> Path | str | None:
    """--data-dir when given, else the data set the checkpoint's run trained on, else None (then
    CIFARLAB_DATA or the cache): evaluate, calibrate, export and the report find a run's data alike."""
    return data_dir if data_dir is not None else run_data_dir(ckpt)
