"""The package's floors: each folder imports only from the folders below it (README, Layout)."""

import re
from pathlib import Path

import cifarlab

FLOORS = {
    "errors": 0, "text": 0, "runtime": 1, "data": 2, "models": 2, "common": 3,
    "training": 4, "inference": 4, "experiments": 5, "serve": 5, "api": 6, "cli": 6, "__main__": 7,
}
IMPORT = re.compile(r"^\s*(?:from cifarlab\.(\w+)|from cifarlab import (\w+)|import cifarlab\.(\w+))", re.M)


def imports_by_area() -> dict[str, set[str]]:
    root = Path(cifarlab.__file__).parent
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        area = parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]
        if area == "__init__":
            continue
        for match in IMPORT.finditer(path.read_text()):
            target = next(g for g in match.groups() if g)
            if target != "__version__" and target != area:
                found.setdefault(area, set()).add(target)
    return found


def test_every_folder_imports_only_from_below():
    found = imports_by_area()
    assert set(found) <= set(FLOORS), set(found) - set(FLOORS)
    upward = {(area, target) for area, targets in found.items() for target in targets if FLOORS[target] >= FLOORS[area]}
    assert upward == set()


def test_training_and_inference_do_not_import_each_other():
    found = imports_by_area()
    assert "inference" not in found.get("training", set()) and "training" not in found.get("inference", set())


def test_only_the_run_directory_names_run_files():
    root = Path(cifarlab.__file__).parent
    names = re.compile(r'"(config\.json|metrics\.jsonl|checkpoint\.pt|status\.json|results\.json|evaluation\.json|calibration\.json|robustness\.json)"')
    naming = {str(p.relative_to(root)) for p in root.rglob("*.py") if names.search(p.read_text())}
    assert naming == {"common/rundir.py"}
