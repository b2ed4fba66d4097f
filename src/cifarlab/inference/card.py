"""The model card (README.md) of an exported model: what it is, how it was made, how well it does.

The front matter is the YAML metadata model hubs read (library, tags, data set, metrics, and a
model-index entry with the test accuracy when it was measured). Every figure in the card comes
from a file the run wrote: results.json or evaluation.json for the test set, robustness.json and
calibration.json when those were measured. What was not measured says so; nothing is estimated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifarlab import __version__
from cifarlab.common.rundir import (
    CALIBRATION,
    EVALUATION,
    EXPORT_CARD,
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    RESULTS,
    ROBUSTNESS,
    RunDir,
)
from cifarlab.training.config import read_run_config

NOT_MEASURED = "Not measured."
# The recipe fields a reader wants first; config.json's "recipe" holds every one.
RECIPE_FIELDS = (
    "preset",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "label_smoothing",
    "schedule",
    "crop_pad",
    "flip",
    "amp",
    "tta",
    "seed",
    "init_from",
)


def run_measurements(run_path: Path, epoch: int | None) -> dict:
    """What the run beside a checkpoint recorded: data facts, test figures, robustness, calibration.
    Empty when the checkpoint has no run directory around it (a checkpoint copied elsewhere, or an
    export exported again); a run's damaged files are refused as every other reader refuses them."""
    run = RunDir(run_path)
    if not run.holds_run():
        return {}
    config = read_run_config(run.path)
    test, source = run.results(), RESULTS
    evaluation = run.measured(EVALUATION)
    if test is None and evaluation is not None and evaluation.get("epoch") == epoch:
        test, source = evaluation, EVALUATION  # an unfinished run that `cifarlab evaluate` measured
    return {
        "data": config,
        "test": test,
        "test_source": source,
        "robustness": run.measured(ROBUSTNESS),
        "calibration": run.measured(CALIBRATION),
    }


def model_card(config: dict, params: int, measured: dict) -> str:
    """README.md for an export whose config.json holds `config`, a model of `params` parameters."""
    sections = [
        front_matter(config, measured.get("test")),
        _title(config, params, measured),
        _use(config),
        _model(config, params),
        _recipe(config.get("recipe") or {}),
        _data(measured.get("data")),
        _evaluation(measured.get("test"), measured.get("test_source")),
        _figures("Robustness", ROBUSTNESS, measured.get("robustness")),
        _figures("Calibration", CALIBRATION, measured.get("calibration")),
        _intended_use(),
        _limitations(),
        _files(config),
    ]
    return "\n\n".join(sections) + "\n"


# Each character a Markdown renderer (with HTML, as model hubs run) could read as markup, written
# so that it only shows itself: HTML's specials as entities, Markdown's ASCII punctuation escaped.
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_MARKDOWN_PUNCTUATION = set("\\`*_{}[]()#+-.!|~$")


def _text(value: Any) -> str:
    """Free text from a checkpoint or a config (class names, preset, model name, options) as card
    text that shows exactly those characters: one line (line breaks and other control characters
    become spaces, so `---` or a heading cannot start a block), no HTML tag, comment or entity, no
    Markdown link, image, emphasis or code span."""
    out = []
    for char in str(value):
        if char in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[char])
        elif char in _MARKDOWN_PUNCTUATION:
            out.append("\\" + char)
        elif not char.isprintable():
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def _yaml(value: Any) -> str:
    """A YAML scalar holding `value` as a string, whatever its characters: a JSON string (ASCII, with
    escapes) is a valid YAML double-quoted scalar."""
    return json.dumps(str(value))


def front_matter(config: dict, test: dict | None) -> str:
    lines = [
        "---",
        "library_name: cifarlab",
        "pipeline_tag: image-classification",
        "tags:",
        *(f"- {tag}" for tag in ("image-classification", "cifar10", "pytorch", "safetensors", _yaml(config["model"]))),
        "datasets:",
        "- cifar10",
        "metrics:",
        "- accuracy",
    ]
    if test and test.get("test_accuracy") is not None:
        lines += [
            "model-index:",
            f"- name: {_yaml(config['model'])}",
            "  results:",
            "  - task:",
            "      type: image-classification",
            "      name: Image Classification",
            "    dataset:",
            "      type: cifar10",
            "      name: CIFAR-10",
            "      split: test",
            "    metrics:",
            "    - type: accuracy",
            f"      value: {test['test_accuracy']:.4f}",
            f"      name: {_yaml('Test accuracy (tta={})'.format(test.get('tta', 0)))}",
        ]
    return "\n".join([*lines, "---"])


def _title(config: dict, params: int, measured: dict) -> str:
    test = measured.get("test")
    accuracy = f", {test['test_accuracy']:.2%} accurate on the CIFAR-10 test set" if test else ""
    model, classes = _text(config["model"]), ", ".join(_text(name) for name in config["classes"])
    return (
        f"# {model}: a CIFAR-10 classifier\n\n"
        f"A {model} network of {params:,} parameters trained with cifarlab{accuracy}. "
        f"It sorts 32x32 RGB images into the {len(config['classes'])} CIFAR-10 classes: {classes}."
    )


def _use(config: dict) -> str:
    return f"""## How to use

With cifarlab (`pip install 'cifarlab[safetensors,predict]'`), this folder works wherever a run does:

```bash
cifarlab predict THIS_FOLDER image.png      # top classes of an image (any size; converted to 32x32)
cifarlab serve THIS_FOLDER                  # HTTP service and upload page on http://127.0.0.1:8000/
cifarlab evaluate THIS_FOLDER               # test-set figures, written to THIS_FOLDER/{EVALUATION}
```

In Python, without the command line:

```python
import json, torch
from safetensors.torch import load_file
from cifarlab.models import build_model

config = json.load(open("THIS_FOLDER/{EXPORT_CONFIG}"))
model = build_model(config["model"], **config["model_options"])
model.load_state_dict(load_file("THIS_FOLDER/{EXPORT_WEIGHTS}"))
model.eval()
# pixels: uint8 tensor (N, 3, 32, 32), RGB
mean, std = torch.tensor(config["mean"]).view(3, 1, 1), torch.tensor(config["std"]).view(3, 1, 1)
logits = model((pixels / 255 - mean) / std)
classes = [config["classes"][i] for i in logits.argmax(1)]
```"""


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {_text(name)} | {_cell(value)} |" for name, value in rows)])


def _cell(value: Any) -> str:
    """A table cell: a float to 4 digits, anything else as escaped text (options and lists as JSON)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return _text(json.dumps(value))
    return _text(value)


def _model(config: dict, params: int) -> str:
    rows = [
        ("architecture", config["model"]),
        ("options", config.get("model_options") or "defaults"),
        ("parameters", f"{params:,}"),
        ("input", "3 x 32 x 32 RGB; pixels / 255, then per channel (x - mean) / std"),
        ("mean", config["mean"]),
        ("std", config["std"]),
        ("output", f"{len(config['classes'])} logits (softmax gives class probabilities)"),
        ("trained in", _train_dtype(config.get("train_dtype")) + "; weights stored as float32, inference in float32"),
        ("epochs trained", config.get("epoch", "not recorded")),
    ]
    return "## Model\n\n" + _table(rows)


def _train_dtype(dtype: str | None) -> str:
    return f"{dtype} autocast" if dtype and dtype != "float32" else "float32"


def _recipe(recipe: dict) -> str:
    if not recipe:
        return "## Training recipe\n\nNot recorded (the checkpoint carried no training configuration)."
    rows = [(key, recipe[key]) for key in RECIPE_FIELDS if recipe.get(key) not in (None, "")]
    return "## Training recipe\n\n" + _table(rows) + f"\n\nEvery setting of the training is in `{EXPORT_CONFIG}` under `recipe`."


def _data(run_config: dict | None) -> str:
    text = "## Training data\n\nCIFAR-10 (Krizhevsky, 2009): 60,000 32x32 colour images of ten classes, 50,000 for training and 10,000 for testing."
    if not run_config:
        return text + " How many training images this model saw was not recorded (exported without its run directory)."
    subset = run_config.get("train_subset")
    seen = f"{run_config.get('train_images', 0):,} training images" + (f" (the first {subset:,} only)" if subset else "")
    held_out = f"{run_config.get('val_images', 0):,} held out for validation"
    return text + f" This model trained on {seen}, with {held_out}; the test set was not used in training."


def _evaluation(test: dict | None, source: str | None) -> str:
    if not test:
        return f"## Evaluation\n\n{NOT_MEASURED} `cifarlab evaluate THIS_FOLDER` measures it."
    rows = [("test accuracy", f"{test['test_accuracy']:.2%}")]
    if test.get("test_error") is not None:
        rows.append(("test error", f"{test['test_error']:.2%}"))
    if test.get("test_loss") is not None:
        rows.append(("test loss", f"{test['test_loss']:.4f}"))
    rows.append(("test-time augmentation", test.get("tta", 0)))
    text = f"## Evaluation\n\nOn the CIFAR-10 test set, from the run's `{source}`:\n\n" + _table(rows)
    per_class = test.get("per_class_accuracy")
    if per_class:
        text += "\n\nAccuracy per class:\n\n" + _table([(name, f"{value:.2%}") for name, value in per_class.items()])
    return text


def _figures(title: str, file: str, figures: dict | None) -> str:
    """A measurement's headline numbers as a table; its file holds the rest."""
    if figures is None:
        return f"## {title}\n\n{NOT_MEASURED}"
    rows = [(key, value) for key, value in figures.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    table = _table(rows) + "\n\n" if rows else ""
    return f"## {title}\n\n{table}From the run's `{file}`."


def _intended_use() -> str:
    return (
        "## Intended use\n\n"
        "Research and teaching: a baseline to compare training methods against, a model to study "
        "(errors, calibration, robustness), and a small classifier for images like CIFAR-10's: "
        "low-resolution photographs of one object of the ten classes, centred."
    )


def _limitations() -> str:
    return (
        "## Limitations\n\n"
        "- It knows ten classes and gives every image one of them; an image of anything else still gets "
        "a confident-looking answer. There is no 'none of these'.\n"
        "- It sees 32x32 pixels: a larger image is cropped to its central square and shrunk, losing detail.\n"
        "- The test accuracy holds for images drawn like CIFAR-10's (1990s-2000s web photographs, "
        "object centred). Other cameras, styles or corruptions can lower it a lot; see Robustness.\n"
        "- Probabilities are not calibrated unless Calibration above says how well they are.\n"
        "- CIFAR-10 has some mislabelled images and near-duplicates between training and test sets, "
        "so its test accuracy slightly flatters a model.\n"
        "- Not for decisions about people, or where a wrong answer is costly."
    )


def _files(config: dict) -> str:
    source = config.get("source") or {}
    return (
        "## Files\n\n"
        f"- `{EXPORT_WEIGHTS}`: the weights (safetensors, float32), SHA-256 {_text(config['weights']['sha256'])}\n"
        f"- `{EXPORT_CONFIG}`: architecture, options, classes, normalisation and the training recipe\n"
        f"- `{EXPORT_CARD}`: this card\n\n"
        f"Exported by cifarlab {__version__} from {_text(Path(source.get('checkpoint', '?')).name)} "
        f"(epoch {_text(config.get('epoch', '?'))}); loaded back, it gave logits identical to the checkpoint's."
    )
