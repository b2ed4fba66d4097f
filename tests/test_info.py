"""`cifarlab info` says which dtype `amp: auto` resolves to on this machine, and why."""

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
