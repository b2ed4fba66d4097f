"""Train a preset, evaluate it on the test set and classify a few test images, in a few lines.

python examples/train_and_evaluate.py --data-dir ../shared/cifar10            # quick: about 60 s on 2 cores
python examples/train_and_evaluate.py --preset fast --epochs 8 --out runs/fast-py
"""

import argparse
import os

import cifarlab

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=os.environ.get("CIFARLAB_DATA"), help="CIFAR-10 location (default: $CIFARLAB_DATA)")
parser.add_argument("--preset", default="quick")
parser.add_argument("--epochs", type=int, help="default: the preset's")
parser.add_argument("--train-subset", type=int, help="train on only the first N training images")
parser.add_argument("--val-size", type=int, help="validation images held out (default: the preset's)")
parser.add_argument("--out", help="run directory (default: runs/PRESET-TIMESTAMP)")
args = parser.parse_args()

settings = {name: value for name, value in [("epochs", args.epochs), ("val_size", args.val_size)] if value is not None}
run = cifarlab.train(args.preset, out=args.out, data_dir=args.data_dir, train_subset=args.train_subset, **settings)
print(f"{run.path}: test accuracy {run.results['test_accuracy']:.2%} after {len(run.metrics)} epochs")

model = cifarlab.load(run.path)
print("evaluated again:", model.evaluate(args.data_dir))
test = cifarlab.load_cifar10(args.data_dir).test_images[:5]
print("first test images:", model.predict(test))
