"""The MLflow model of a cifarlab run (`cifarlab train --mlflow`, docs/mlflow.md), as MLflow loads it.

training/tracking.py saves a run's weights (a model-only checkpoint) as a pyfunc model whose
`loader_module` is this module: `mlflow.pyfunc.load_model(URI)` and `mlflow models serve` import
it and call `_load_pyfunc`, which wraps the one loaded-model class every inference path uses
(`Predictor`, inference/model.py). So the logged model gives exactly the classes and
probabilities `cifarlab predict` gives for the same images: float32, no test-time augmentation.

Input: uint8 images (N, 32, 32, 3), RGB, as numpy arrays (MLflow's tensor input; a served model
takes {"inputs": [...]} JSON). Output: a DataFrame with the most probable class ("class") and one
column of probabilities per class name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifarlab.common.rundir import CHECKPOINT
from cifarlab.inference.model import Predictor

IMAGE_SHAPE = (32, 32, 3)
CLASS_COLUMN = "class"


class ImageClassifier:
    """The pyfunc implementation MLflow calls predict on."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, model_input, params=None):
        import pandas as pd

        images = _images(model_input)
        logits = self.predictor.logits(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        probabilities = self.predictor.probabilities(logits).numpy()
        classes = self.predictor.classes
        table = pd.DataFrame(probabilities, columns=classes)
        table.insert(0, CLASS_COLUMN, [classes[i] for i in probabilities.argmax(axis=1)])
        return table


def _images(model_input) -> np.ndarray:
    """The input as uint8 (N, 32, 32, 3), or a one-line ValueError saying what came instead."""
    if isinstance(model_input, dict) and len(model_input) == 1:  # one named tensor
        model_input = next(iter(model_input.values()))
    images = np.asarray(model_input)
    if images.ndim == 3:
        images = images[None]
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected uint8 images of shape (N, 32, 32, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.min(initial=0) < 0 or images.max(initial=0) > 255:
            raise ValueError(f"expected uint8 pixel values 0-255, got {images.dtype}")
        images = images.astype(np.uint8)
    return np.ascontiguousarray(images)


def _load_pyfunc(data_path: str, model_config=None) -> ImageClassifier:
    """MLflow's entry point: `data_path` is the model's data folder, holding a model-only checkpoint."""
    return ImageClassifier(Predictor(Path(data_path) / CHECKPOINT, device="cpu"))
