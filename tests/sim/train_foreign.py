"""A classifier trained the way users train theirs elsewhere: a plain torchvision loop.

It stands in for "a model this project did not train" (README, Bring your own model): a
torchvision MobileNetV3 with ImageNet's 1,000-way head, trained from scratch on an
ImageFolder tree whose classes are ImageNet classes (Imagenette), each image's target being
its class's ImageNet index. None of the pipeline's code is used: the result is a state dict
and a labels file, as a user would bring them to ``python -m pipeline import``.

usage: python tests/sim/train_foreign.py --data ../shared/data/imagenette --out build/byom \
           [--arch mobilenet_v3_small] [--size 160] [--epochs 12]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import models
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    torch.manual_seed(0)
    categories = models.get_model_weights(args.arch).DEFAULT.meta["categories"]  # names only: no download
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "imagenet-labels.txt").write_text("\n".join(categories) + "\n", encoding="utf-8")
    index = imagenet_index(args.data, categories)
    resize = round(args.size / 0.875)
    start = time.time()
    x, y = load_tree(args.data / "train", index, resize)
    print(f"{len(x)} training images decoded in {time.time() - start:.0f} s", flush=True)
    model = models.get_model(args.arch, weights=None, num_classes=len(categories)).to(memory_format=torch.channels_last)
    train(model, x, y, args)
    torch.save(model.state_dict(), args.out / f"{args.arch}.pth")
    print(f"wrote {args.out / f'{args.arch}.pth'} and {args.out / 'imagenet-labels.txt'}")


def imagenet_index(root: Path, categories: list[str]) -> dict[str, int]:
    """Each class folder's ImageNet index, by its readable name in classes.tsv."""
    table = dict(line.split("\t") for line in (root / "classes.tsv").read_text().splitlines() if line)
    return {folder: categories.index(name) for folder, name in table.items()}


def load_tree(split: Path, index: dict[str, int], resize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image, shorter side resized once, as uint8 (N, 3, R, R) centre squares."""
    images, targets = [], []
    for folder in sorted(index):
        for path in sorted((split / folder).iterdir()):
            image = Image.open(path).convert("RGB")
            scale = resize / min(image.size)
            image = image.resize((max(resize, round(image.width * scale)), max(resize, round(image.height * scale))),
                                 Image.BILINEAR)
            left, top = (image.width - resize) // 2, (image.height - resize) // 2
            images.append(np.asarray(image.crop((left, top, left + resize, top + resize))).transpose(2, 0, 1))
            targets.append(index[folder])
    return torch.from_numpy(np.stack(images)), torch.tensor(targets)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> None:
    augment = v2.Compose([v2.RandomResizedCrop(args.size, scale=(0.35, 1.0), antialias=True),
                          v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    steps = args.epochs * (len(x) // args.batch)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for epoch in range(args.epochs):
        start, seen, right = time.time(), 0, 0
        for batch in torch.randperm(len(x)).split(args.batch)[: len(x) // args.batch]:
            inputs = torch.stack([augment(img) for img in x[batch]]).contiguous(memory_format=torch.channels_last)
            logits = model(inputs)
            loss = loss_fn(logits, y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(batch)
            right += int((logits.argmax(1) == y[batch]).sum())
            if seen // args.batch % 25 == 0:
                print(f"  {seen}/{len(x)} images, {time.time() - start:.0f} s", flush=True)
        print(f"epoch {epoch + 1}/{args.epochs}: train top-1 {right / seen:.2%}, loss {loss.item():.3f}, "
              f"{time.time() - start:.0f} s", flush=True)
    model.eval()


if __name__ == "__main__":
    main()
