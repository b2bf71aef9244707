"""Records which samples each rank sees per epoch (shuffled and ordered loaders)."""

import os
import sys

import torch
from torch.utils.data import DataLoader

from loopkit import Fabric

NUM_SAMPLES, EPOCHS, SEED = 20, 3, 7


def main(out: str) -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    fabric.seed_everything(SEED)
    data = torch.arange(NUM_SAMPLES)
    shuffled, ordered = fabric.setup_dataloaders(
        DataLoader(data, batch_size=3, shuffle=True), DataLoader(data, batch_size=3)
    )
    seen = {"shuffled": [], "ordered": []}
    for _ in range(EPOCHS):
        seen["shuffled"].append([int(i) for batch in shuffled for i in batch])
        seen["ordered"].append([int(i) for batch in ordered for i in batch])
    seen["sampler"] = type(shuffled.sampler).__name__
    torch.save(seen, os.path.join(out, f"rank{fabric.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
