"""`cifarlab info` says which dtype `amp: auto` resolves to on this machine, and why."""

import os
from pathlib import Path

import pytest
import torch

from cifarlab.cli import main
from cifarlab.runtime import native_bf16
from cifarlab.training.info import amp_auto


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set whether this CPU counts as computing bf16 natively ("1" or "0"), the cache cleared around it."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def choose(native: str) -> None:
        monkeypatch.setenv("CIFARLAB_NATIVE_BF16", native)
        native_bf16.cache_clear()

    yield choose
    native_bf16.cache_clear()


@pytest.mark.parametrize("native, dtype", [("1", "bfloat16"), ("0", "float32")])
def test_amp_auto_resolves_by_native_bf16(native, dtype, cpu_bf16):
    cpu_bf16(native)
    facts = amp_auto(torch.device("cpu"))
    assert facts["dtype"] == dtype and ("natively" in facts["reason"]) == (native == "1")


def test_info_prints_the_dtype(tiny_binary, capsys, cpu_bf16):
    cpu_bf16("0")
    assert main(["info", "--data-dir", str(tiny_binary)]) == 0
    assert "amp auto: trains in float32 here (this CPU has no native bfloat16" in capsys.readouterr().out


def test_an_unlistable_batches_folder_is_not_taken_for_missing_data(tiny_binary, monkeypatch):
    """Its batch files hidden, it read as "not found (it is downloaded on first use)" and train downloaded into it."""
    from cifarlab.data import formats
    from cifarlab.training.info import data_status

    batches = tiny_binary / "cifar-10-batches-bin"
    listing = os.scandir

    def scandir(path):
        if Path(path) == batches:
            raise PermissionError(13, "Permission denied")
        return listing(path)

    monkeypatch.setattr(formats, "_layout", lambda folder: None)  # as root reads any folder, hide the files
    monkeypatch.setattr(os, "scandir", scandir)
    status = data_status(tiny_binary)["status"]
    assert f"{batches}: cannot be read (Permission denied)" in status and "downloaded" not in status
