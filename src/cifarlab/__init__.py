"""cifarlab: train, evaluate, compare and use CIFAR-10 classifiers in PyTorch."""

__version__ = "0.1.0"
