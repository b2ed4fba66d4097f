"""Classify every image in a folder with a trained run, a checkpoint or an exported folder.

python examples/predict_folder.py runs/quick-20250101-120000 photos/
"""

import argparse
from pathlib import Path

import cifarlab

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", help="a run directory, a checkpoint or a safetensors export folder")
parser.add_argument("folder", type=Path)
args = parser.parse_args()

files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
model = cifarlab.load(args.model)
predictions = model.predict(files)
for file, top in zip(files, predictions.top_k(3)):
    print(f"{file}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
