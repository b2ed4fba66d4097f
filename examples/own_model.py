"""Register your own network and train it with cifarlab's `fast` recipe (airbench94's optimiser,
schedule and augmentation); then report, export and serve work with it as with the built-in ones.

    python examples/own_model.py --data-dir ../shared/cifar10
    CIFARLAB_MODELS=own_model PYTHONPATH=examples cifarlab report runs/own-model   # the CLI finds it too
"""

import argparse
import os

import torch.nn as nn

import cifarlab


@cifarlab.register_model("small_cnn")
def small_cnn(num_classes: int = 10, width: int = 64) -> nn.Module:
    """Three conv-BN-ReLU blocks with max pooling, then a linear head: (N, 3, 32, 32) -> (N, classes)."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(3, width),
        block(width, 2 * width),
        block(2 * width, 4 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CIFARLAB_DATA"), help="CIFAR-10 location (default: $CIFARLAB_DATA)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.2, help="SGD lr of the head and biases (default: %(default)s)")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--out", default="runs/own-model")
    args = parser.parse_args()

    # fast's progressive resolution needs a stem whose stride can be set (FastNet's); this network has
    # none, so it trains at full resolution throughout (no stride-2 nor 24x24-crop epochs). The
    # recipe's Muon (muon_lr) trains the conv filters whatever the network. Its SGD lr for the rest
    # (2,650 at batch 2000) is FastNet's, whose logits are scaled by 1/256: a plain linear head needs
    # a plain lr, here used as given at any batch size (lr_batch_size=0).
    run = cifarlab.train(
        "fast",
        out=args.out,
        data_dir=args.data_dir,
        train_subset=args.train_subset,
        model="small_cnn",
        model_options={"width": args.width},
        low_res_epochs=0,
        mid_res_epochs=0,
        lr_batch_size=0,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_size=0,
    )
    print(f"small_cnn: test accuracy {run.results['test_accuracy']:.2%}, {run.results['params']:,} parameters")
