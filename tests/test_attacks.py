"""benchmarks/attacks.py: its classifier, and the fastest of its attacks (those needing no trained run) replayed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attacks  # noqa: E402
from attack_tools import Proc, base_class  # noqa: E402

# Each needs only the tiny data: no training, one CLI call of a few seconds.
FASTEST = (
    "--set seed=99999999999999999999",
    "--set val_size=49999 with a small subset",
    "deeply nested TOML --config",
    "sweep variant name of 300 characters: --list",
    "sweep variant name with a NUL byte: --list",
    "--set milestones=[1..15000]",
    "info --data-dir on a data folder whose cifar-10-batches-bin is unreadable",
)


def test_the_classifier_tells_the_classes_apart():
    proc = lambda rc, err="": Proc(["x"], rc, "", err)  # noqa: E731
    assert base_class(proc(None)) == "hang"
    assert base_class(proc(-9)) == "crash"
    assert base_class(proc(1, "Traceback (most recent call last):\n  ...\nValueError: x")) == "traceback"
    assert base_class(proc(2, "cifarlab train: error: bad value")) == "one-line error"
    assert base_class(proc(0)) == "proper"


@pytest.mark.slow
def test_the_fastest_attacks_end_as_they_should(tmp_path):
    chosen = [a for a in attacks.ATTACKS if a.name in FASTEST]
    assert len(chosen) == len(FASTEST)  # every name above is still an attack of the script
    ctx = attacks.Context(tmp_path)
    outcomes = [attacks.judge(ctx, a) for a in chosen]
    assert [(o.name, o.kind, o.stderr, o.detail) for o in outcomes if o.kind in attacks.BAD] == []
    assert all(o.kind == o.expected for o in outcomes if o.expected != "either"), [(o.name, o.kind) for o in outcomes]
    assert "run" not in ctx.__dict__  # none trained the shared run: they stay fast
