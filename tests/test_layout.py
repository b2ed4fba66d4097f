"""The package's floors: each folder imports only from the folders below it (README, Layout), no
two modules import each other (directly or round a longer loop), and only the run directory's
module names the run files."""

import ast
import re
from pathlib import Path

import cifarlab

ROOT = Path(cifarlab.__file__).parent
# common sits below models: a checkpoint's model is rebuilt in models/checkpoint.py, above the
# run directory and the checkpoint reader it uses (common imports nothing from models).
FLOORS = {
    "errors": 0,
    "text": 0,
    "runtime": 1,
    "data": 2,
    "common": 3,
    "models": 4,
    "training": 5,
    "inference": 5,
    "experiments": 6,
    "serve": 6,
    "api": 7,
    "cli": 7,
    "__main__": 8,
}
# inference reads a run's config.json through training.config, the schema of its train section
# (read_run_config); nothing else of training.
SIDEWAYS = {("inference", "cifarlab.training.config")}
# No cycle is known: the sweep modules' rebuild removed the last (experiments.search <-> sweep).
KNOWN_CYCLES: set[frozenset[str]] = set()
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "status.json", "results.json", "evaluation.json", "calibration.json", "robustness.json")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    """Each cifarlab module's imports of other cifarlab modules (`from cifarlab.x import y` counts
    cifarlab.x.y when that is a module, else cifarlab.x), at any depth of the file."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("cifarlab.")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cifarlab":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
        found.discard(name)
    return {name: {t for t in targets if t in modules and t != "cifarlab"} for name, targets in graph.items()}


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_folder_imports_only_from_below():
    upward = set()
    for module, targets in module_imports().items():
        if area(module) == "__init__":
            continue
        for target in targets:
            here, there = area(module), area(target)
            assert here in FLOORS and there in FLOORS, (module, target)
            if here != there and FLOORS[there] >= FLOORS[here] and (here, target) not in SIDEWAYS:
                upward.add((module, target))
    assert upward == set()


def test_training_and_inference_do_not_import_each_other():
    for module, targets in module_imports().items():
        others = {area(t) for t in targets if (area(module), t) not in SIDEWAYS}
        assert not ({area(module), *others} >= {"training", "inference"} and area(module) in ("training", "inference")), module


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The modules of every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles_inside_a_folder():
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert cycles(graph) == {frozenset({"a.x", "a.y", "a.z"})}
    assert cycles({"a.x": {"a.y"}, "a.y": set()}) == set()


def test_no_module_imports_itself_round_a_loop():
    assert cycles(module_imports()) <= KNOWN_CYCLES


def strings_naming(path: Path, names: tuple[str, ...]) -> set[str]:
    """The run-file names a module's code opens by name: a string (in any quotes, a constant or
    part of an f-string) that is a run file's name or a path ending in one. Prose that mentions
    a file (help texts, messages, docstrings) names nothing to open."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    pattern = re.compile(r"(?:^|[/\\])(" + "|".join(re.escape(n) for n in names) + r")$")
    return {
        m.group(1)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        for m in [pattern.search(node.value.strip())]
        if m
    }


def test_the_name_finder_sees_every_way_of_writing_a_name(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "'''Reads results.json.'''\nA = 'results.json'\nB = f\"{run}/status.json\"\n"
        "C = 'see metrics.jsonl for more'\nD = Path('runs') / 'calibration.json'\n"
    )
    assert strings_naming(module, RUN_FILES) == {"results.json", "status.json", "calibration.json"}


def test_only_the_run_directory_names_run_files():
    naming = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if strings_naming(p, RUN_FILES)}
    assert naming == {"common/rundir.py"}


def test_common_imports_nothing_from_models():
    """Checkpoint loading that builds a model lives in models/checkpoint.py, above common."""
    assert {(m, t) for m, targets in module_imports().items() if area(m) == "common" for t in targets if area(t) == "models"} == set()


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def long_functions(tree: ast.AST) -> dict[str, int]:
    """Each function (or method) longer than MAX_FUNCTION_LINES, from its def line to its last, with its length."""
    return {
        f"{node.name}:{node.lineno}": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }


def test_the_length_finder_measures_functions_from_def_to_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    assert long_functions(ast.parse(f"def short():\n{body}")) == {}  # 60 lines in all
    method = f"async def long(self):\n{body}    return 1\n"  # 61 lines, inside a class
    assert long_functions(ast.parse("class A:\n" + "".join("    " + line for line in method.splitlines(keepends=True)))) == {
        "long:2": MAX_FUNCTION_LINES + 1
    }


def test_modules_and_functions_are_short():
    """README's style: modules under 450 lines, functions under 60; split a module by concern and
    a function into named steps rather than let either grow."""
    long_modules = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long_modules == {}
    functions = {f"{p.relative_to(ROOT)}:{name}": n for p in ROOT.rglob("*.py") for name, n in long_functions(ast.parse(p.read_text())).items()}
    assert functions == {}
