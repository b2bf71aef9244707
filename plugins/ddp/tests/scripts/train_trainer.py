"""The train_ddp model and data fitted by loopkit.Trainer (automatic optimization).

Every rank writes ``rank{R}.pt`` into the output folder: its weights and the step count.
Strategy and devices come from the arguments (``--devices 2 --strategy ddp``) or, left out,
from ``loopkit run`` through the environment. Under ``ddp_spawn`` only this process writes
(``rank0.pt``): what ``fit`` left here (and, with ``--validate``, what ``validate`` returned).
"""

import argparse
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loopkit

NUM_SAMPLES, BATCH = 32, 4


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(loopkit.LoopModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ManualRegressor(Regressor):
    """The same steps, taken by hand (manual optimization)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        loss = nn.functional.mse_loss(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log("train_loss", loss)


class TwoStepRegressor(ManualRegressor):
    """Manual optimization with two optimizers, each stepping on its own layer's loss, so each
    backward leaves the other optimizer's parameters without a gradient (needs
    ``find_unused_parameters=True`` under DDP), and two backwards run in one training_step."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        first, last = self.optimizers()
        hidden = self.net[1](self.net[0](x))
        loss_first = hidden.pow(2).mean()
        first.zero_grad()
        self.manual_backward(loss_first)
        first.step()
        loss_last = nn.functional.mse_loss(self.net[2](hidden.detach()), y)
        last.zero_grad()
        self.manual_backward(loss_last)
        last.step()

    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[2].parameters(), lr=0.1),
        ]


class AccumulatingRegressor(ManualRegressor):
    """Manual optimization accumulating 2 batches per step, the first without gradient sync."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        last = (batch_idx + 1) % 2 == 0
        fabric = self.trainer.fabric
        with fabric.no_backward_sync(self.trainer.model, enabled=not last):
            self.manual_backward(nn.functional.mse_loss(self.net(x), y) / 2)
        if last:
            opt.step()
            opt.zero_grad()


MODULES = {
    "auto": Regressor,
    "manual": ManualRegressor,
    "two-step": TwoStepRegressor,
    "accumulate": AccumulatingRegressor,
}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--checkpoint", action="store_true", help="a ModelCheckpoint under out/")
    p.add_argument("--validate", action="store_true", help="trainer.validate() after fit")
    p.add_argument("--module", choices=sorted(MODULES), default="auto")
    args = p.parse_args(argv)
    module = MODULES[args.module]()
    trainer = loopkit.Trainer(
        accelerator="cpu", strategy=args.strategy, devices=args.devices, max_epochs=2,
        logger=False, enable_checkpointing=args.checkpoint, default_root_dir=args.out,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data(), batch_size=BATCH))
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "pid": os.getpid(),
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "weights": {k.removeprefix("net."): v.clone() for k, v in module.state_dict().items()},
    }
    if args.checkpoint:
        result["best_model_path"] = trainer.checkpoint_callback.best_model_path
    if args.validate:
        result["validated"] = trainer.validate(module, DataLoader(data(), batch_size=BATCH))
    torch.save(result, os.path.join(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1:])
