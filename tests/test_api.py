"""The public Python API (`import cifarlab`): each exported name on tiny fake data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import cifarlab
from cifarlab.cli import main as cli_main
from conftest import write_binary

TINY_QUICK = {"epochs": 1, "val_size": 20, "batch_size": 32, "model_options.widths": [8, 16, 16]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("apidata")
    write_binary(root, per_batch=20, test=20)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> cifarlab.Run:
    out = tmp_path_factory.mktemp("apirun") / "run"
    return cifarlab.train("quick", out=out, data_dir=data, device="cpu", quiet=True, **TINY_QUICK)


@pytest.fixture(scope="module")
def pngs(data, tmp_path_factory) -> list[Path]:
    from PIL import Image

    images = cifarlab.load_cifar10(data).test_images[:4]
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def test_import_is_light_and_lists_its_public_names():
    code = "import sys, cifarlab; print('torch' in sys.modules, len(cifarlab.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) >= 15
    for name in cifarlab.__all__:
        value = getattr(cifarlab, name)
        assert name == "__version__" or name == "CLASSES" or value.__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cifarlab.nothing  # noqa: B018


def test_train_returns_the_finished_run(run, data):
    assert run.status["status"] == "finished"
    assert run.config.preset == "quick" and run.config.epochs == 1 and run.config.model_options["widths"] == [8, 16, 16]
    assert len(run.metrics) == 1 and run.metrics[0]["epoch"] == 1
    assert 0 <= run.results["test_accuracy"] <= 1
    assert run.facts["train_images"] == 80 and Path(run.facts["data"]).parent == data.resolve()
    assert "finished" in repr(run)


def test_train_checks_settings_as_set_does(tmp_path, data):
    with pytest.raises(cifarlab.CifarlabError, match="unknown field 'epoch'"):
        cifarlab.train("quick", out=tmp_path / "a", data_dir=data, epoch=1)
    with pytest.raises(cifarlab.CifarlabError, match="bad value for lr"):
        cifarlab.train("quick", out=tmp_path / "b", data_dir=data, lr=-1.0)
    with pytest.raises(cifarlab.CifarlabError, match="unknown preset 'quik'"):
        cifarlab.train("quik", out=tmp_path / "c", data_dir=data)
    assert not (tmp_path / "a").exists()
    assert cifarlab.make_config("fast", epochs=6).low_res_epochs == 2  # --epochs' rule: the 1 + 3 finish kept


def test_run_of_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(cifarlab.CifarlabError, match="no such run directory"):
        cifarlab.Run(tmp_path / "nothing")
    with pytest.raises(cifarlab.CifarlabError, match="no such run, checkpoint or export"):
        cifarlab.load(tmp_path / "nothing")


def test_predict_gives_the_numbers_of_cifarlab_predict(run, pngs, tmp_path, capsys):
    from PIL import Image

    output = tmp_path / "p.json"
    assert cli_main(["predict", str(run.path), *map(str, pngs), "--output", str(output), "--quiet", "--top-k", "10"]) == 0
    expected = json.loads(output.read_text())["predictions"]
    model = cifarlab.load(run.path)
    by_path = model.predict(pngs)
    assert by_path.classes == [p["top1"] for p in expected]
    assert by_path.logits.tolist() == [p["logits"] for p in expected]
    assert by_path.top_k(10) == [[(t["class"], t["prob"]) for t in p["top_k"]] for p in expected]
    arrays = [np.asarray(Image.open(p)) for p in pngs]
    for same in ([Image.open(p) for p in pngs], arrays, np.stack(arrays), torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)):
        assert torch.equal(model.predict(same).probabilities, by_path.probabilities)
    one = model.predict(str(pngs[0]))
    assert len(one) == 1 and one.classes[0] == by_path.classes[0] and abs(sum(one.probabilities[0].tolist()) - 1) < 1e-5
    assert repr(one).startswith("Predictions([") and model.classes == list(cifarlab.CLASSES)


def test_predict_converts_other_sizes_as_predict_does_and_refuses_bad_input(run):
    from PIL import Image

    from cifarlab.inference.predict import to_model_input

    model = cifarlab.load(run.path)
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = model.predict(to_model_input(Image.fromarray(photo))[0])
    assert torch.equal(model.predict(photo).probabilities, expected.probabilities)
    with pytest.raises(cifarlab.CifarlabError, match="uint8"):
        model.predict(torch.rand(3, 32, 32))
    with pytest.raises(cifarlab.CifarlabError, match=r"images\[1\]: expected a path"):
        model.predict([photo, 3])
    with pytest.raises(cifarlab.CifarlabError, match="nope.png: no such file"):
        model.predict("nope.png")


def test_load_takes_a_checkpoint_and_an_export(run, tmp_path):
    pytest.importorskip("safetensors")
    image = cifarlab.load_cifar10(run.facts["data"]).test_images[:3]
    expected = cifarlab.load(run.path).predict(image).logits
    assert torch.equal(cifarlab.load(run.path / "checkpoint.pt").predict(image).logits, expected)
    assert cli_main(["export", str(run.path), "--format", "safetensors", "--output", str(tmp_path / "exp"), "--check-images", "4"]) == 0
    exported = cifarlab.load(tmp_path / "exp")
    assert torch.equal(exported.predict(image).logits, expected) and exported.name == "fast"


def test_model_evaluate_matches_results(run):
    measured = run.load().evaluate()
    assert measured["test_accuracy"] == run.results["test_accuracy"] and measured["tta"] == run.config.tta
    assert measured["test_images"] == 20


def test_create_and_list_models():
    assert {"paper", "fast", "resnet20"} <= set(cifarlab.list_models())
    model = cifarlab.create_model("resnet20", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(cifarlab.CifarlabError, match="unknown model 'resnet21'"):
        cifarlab.create_model("resnet21")
    assert {"fast", "quick", "paper"} <= set(cifarlab.list_presets())
    assert cifarlab.config_fields()["epochs"] == cifarlab.TrainConfig().epochs


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_a_registered_model_trains_with_a_preset_recipe_and_loads(data, tmp_path):
    cifarlab.register_model("api_test_tiny", TinyNet)
    assert "api_test_tiny" in cifarlab.list_models()
    run = cifarlab.train(
        "fast",
        out=tmp_path / "run",
        data_dir=data,
        device="cpu",
        quiet=True,
        model="api_test_tiny",
        epochs=2,
        low_res_epochs=0,
        batch_size=32,
        val_size=20,
        lr=10.0,
        **{"model_options.width": 4},
    )
    assert run.results["model"] == "api_test_tiny" and run.config.optimizer == "muon"
    assert run.load().network.head.in_features == 4
    with pytest.raises(ValueError, match="registered twice"):
        cifarlab.register_model("api_test_tiny", TinyNet)


def test_the_command_line_finds_a_model_named_in_cifarlab_models(run, tmp_path):
    """A run of a user's network reported, exported and served from the command line: the module
    registering it is named in $CIFARLAB_MODELS."""
    plugin = tmp_path / "my_models.py"
    plugin.write_text(
        "import cifarlab, torch.nn as nn\n\n@cifarlab.register_model('plugin_net')\n"
        "def plugin_net(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, num_classes))\n"
    )
    code = "import sys; from cifarlab.cli import main; sys.exit(main(['models', 'plugin_net', '--json']))"
    env = {**__import__("os").environ, "CIFARLAB_MODELS": "my_models", "PYTHONPATH": f"{tmp_path}:{Path(cifarlab.__file__).parents[1]}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["parameters"] == 3072 * 10 + 10
    env["CIFARLAB_MODELS"] = "not_a_module_anywhere"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "'not_a_module_anywhere', which does not import" in done.stderr


def test_cifar_loader_gives_the_batches_training_draws(data):
    dataset = cifarlab.load_cifar10(data)
    assert isinstance(dataset, cifarlab.Cifar10) and dataset.train_images.dtype == torch.uint8
    loader = cifarlab.CifarLoader(dataset.train_images, dataset.train_labels, batch_size=32, crop_pad=2, flip=True, seed=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 4 and loader.epoch == 1
    assert [len(y) for _, y in batches] == [32, 32, 32, 4] and batches[0][0].dtype == torch.float32
    assert abs(float(torch.cat([x for x, _ in batches]).mean())) < 0.5  # normalised
    again = cifarlab.CifarLoader(dataset.train_images, dataset.train_labels, batch_size=32, crop_pad=2, flip=True, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again.batches(1)))  # same seed, same batches
    dropped = cifarlab.CifarLoader(dataset.train_images, dataset.train_labels, batch_size=32, shuffle=False, min_last_batch=8)
    assert len(dropped) == 3 and dropped.images_per_epoch == 96
    assert torch.equal(next(iter(dropped))[1], dataset.train_labels[:32])
    with pytest.raises(cifarlab.CifarlabError, match="uint8 tensor"):
        cifarlab.CifarLoader(dataset.train_images.float(), dataset.train_labels, batch_size=32)
    with pytest.raises(cifarlab.CifarlabError, match="flip_mode"):
        cifarlab.CifarLoader(dataset.train_images, dataset.train_labels, batch_size=32, flip_mode="sometimes")


def test_py_typed_ships():
    assert (Path(cifarlab.__file__).parent / "py.typed").is_file()


def test_run_resume_continues_a_stopped_run(data, tmp_path):
    from cifarlab.training.train import train as train_config

    def stop_after_first_epoch(record):
        raise KeyboardInterrupt

    config = cifarlab.make_config("quick", **{**TINY_QUICK, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train_config(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None, on_epoch=stop_after_first_epoch)
    run = cifarlab.Run(tmp_path / "run")
    assert run.status["status"] == "stopped" and len(run.metrics) == 1 and run.results is None
    assert run.resume(device="cpu", quiet=True) is run
    assert run.status["status"] == "finished" and len(run.metrics) == 2 and run.results["epochs"] == 2
