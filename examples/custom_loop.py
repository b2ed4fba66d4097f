"""Your own training loop on cifarlab's data: the whole set on the device as uint8, batches gathered,
normalised, cropped and flipped there by `CifarLoader` (what `cifarlab train` itself draws from).

    python examples/custom_loop.py --data-dir ../shared/cifar10 --epochs 5
"""

import argparse
import os

import torch
import torch.nn.functional as F

import cifarlab

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=os.environ.get("CIFARLAB_DATA"), help="CIFAR-10 location (default: $CIFARLAB_DATA)")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--batch-size", type=int, default=256)
parser.add_argument("--train-subset", type=int, help="train on only the first N training images")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()

data = cifarlab.load_cifar10(args.data_dir)
n = args.train_subset or len(data.train_labels)
train = cifarlab.CifarLoader(
    data.train_images[:n], data.train_labels[:n], args.batch_size, crop_pad=2, flip=True, device=args.device, min_last_batch=2
)
test = cifarlab.CifarLoader(data.test_images, data.test_labels, 1000, shuffle=False, device=args.device)

model = cifarlab.create_model("resnet20").to(args.device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=args.epochs * len(train))
for epoch in range(1, args.epochs + 1):
    model.train()
    for images, labels in train:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(images).argmax(1) == labels).sum()) for images, labels in test)
    print(f"epoch {epoch}: last batch loss {loss.item():.3f}, test accuracy {correct / len(data.test_labels):.2%}")
