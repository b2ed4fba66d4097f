"""The docs cannot go stale: generated references match the code, every `cifarlab ...` command line in
README.md and docs/ parses with the real parser, the Python examples run on tiny data, and the site
builds with `mkdocs build --strict`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab.cli import build_parser
from conftest import write_binary

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
SHELL_END = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1"}


def code_blocks(language: str) -> list[tuple[Path, str]]:
    return [(page, m.group(3)) for page in PAGES for m in FENCE.finditer(page.read_text()) if m.group(2) == language]


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every cifarlab command in the pages' bash blocks (also as `python -m cifarlab`
    or `torchrun ... -m cifarlab`), continuation lines joined and comments dropped."""
    found = []
    for page, block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [i + 1 for i, w in enumerate(words) if w == "cifarlab" and (i == 0 or "=" in words[i - 1] or words[i - 1] == "-m")]
            for start in starts:
                argv = []
                for word in words[start:]:
                    if word in SHELL_END or word.startswith(">"):
                        break
                    argv.append(word)
                found.append((f"{page.relative_to(ROOT)}: {line.strip()}", argv))
    return found


COMMANDS = command_lines()


def test_the_pages_show_commands_to_check():
    assert len(COMMANDS) >= 25
    assert {argv[0] for _, argv in COMMANDS} >= {"train", "evaluate", "report", "predict", "export", "serve", "sweep"}


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w[:80] for w, _ in COMMANDS])
def test_every_command_line_in_the_docs_parses(where, argv):
    words = [w for w in argv if w != "..."]  # "..." marks flags left out
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            build_parser().parse_args(words)
        except SystemExit as e:
            assert e.code == 0, f"{where}\n{err.getvalue()}"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_reference", ROOT / "docs" / "generate_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_references_are_fresh(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    generator = _generator()
    for name, make in generator.PAGES.items():
        committed = (ROOT / "docs" / "reference" / name).read_text()
        assert committed == make(), f"docs/reference/{name} is stale: run python docs/generate_reference.py"


def test_the_config_reference_has_every_field_and_preset():
    from cifarlab.training.config import TrainConfig
    from cifarlab.training.presets import PRESETS

    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    for field in TrainConfig().to_dict():
        assert page.count(f"| `{field}` |") == 2, field
    assert all(f"`{name}`" in page for name in PRESETS)


@pytest.mark.slow  # the quick start's trains the quick preset for an epoch on 2,000 images
@pytest.mark.parametrize("page, block", code_blocks("python"), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_python_examples_run_on_tiny_data(page, block, tmp_path, monkeypatch):
    """Each block runs as written, from a folder whose ../shared/cifar10 holds tiny fake CIFAR-10
    (5,500 training images: enough for quick's 5,000-image validation split) and an img.png."""
    from PIL import Image

    if block.startswith("# not run by the docs tests:"):  # a block that needs a server, or serves forever
        pytest.skip(block.splitlines()[0].removeprefix("# "))
    write_binary(tmp_path / "shared" / "cifar10", per_batch=1100, test=20)
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(work / "img.png")
    monkeypatch.chdir(work)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(block, f"{page.name} example", "exec"), {"__name__": "__docs__"})
    assert "Predictions([" in out.getvalue() or "predict(" not in block


@pytest.mark.slow  # about 10 s
def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("cifarlab.api.Model") >= 1
