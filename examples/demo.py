"""The loopkit demo: a small classifier trained by ``loopkit.Trainer`` with the installed plugins.

Run it with ``./dev demo`` (which sets up ``.venv`` first) or ``python examples/demo.py``. It
trains an MLP to separate two interleaved spirals, in about ten seconds on two CPU cores, and
shows the kernel at work:

- a ``LoopModule`` (``training_step``, ``validation_step``, ``configure_optimizers``, ``self.log``);
- two custom callbacks on the hook bus: one logs the gradient norm before every optimizer step,
  one keeps the best validation epoch and reports it at the end;
- plugins found by name, each used only when installed: loggers and a progress bar
  (loopkit-logging), bf16 mixed precision (loopkit-precision), a learning-rate schedule and its
  monitor (loopkit-schedulers). A missing plugin is reported with what to install.

Options: ``--epochs N``, ``--root-dir DIR`` (where ``loopkit_logs/`` goes; default: the current
directory), ``--seed N``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import typing as t
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import loopkit
from loopkit.plugins import KNOWN, registry

# What the demo uses when installed: plugin name -> what it adds.
OPTIONAL = {
    "tensorboard": "TensorBoard event files",
    "console": "metrics as log lines",
    "progress_bar": "a progress bar (on a terminal)",
    "bf16-mixed": "bf16 mixed precision",
    "schedulers": "a cosine learning-rate schedule, stepped every epoch",
    "lr_monitor": "the learning rate in the logs",
}


def spirals(n: int, seed: int, noise: float = 0.25) -> TensorDataset:
    """Two interleaved spiral arms in the plane, labelled 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 2
    radius = torch.rand(n, generator=gen) * 3.0 + 0.3
    angle = radius * 2.2 + label * math.pi
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    points += noise * torch.randn(n, 2, generator=gen)
    return TensorDataset(points, label)


class SpiralClassifier(loopkit.LoopModule):
    """An MLP classifier; everything about the loop is the Trainer's."""

    def __init__(self, hidden: int = 64, lr: float = 0.01, epochs: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 2),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss_and_accuracy(self, batch: t.Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x).float()
        return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).float().mean()

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss_and_accuracy(batch)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: t.Any, batch_idx: int) -> None:
        loss, acc = self._loss_and_accuracy(batch)
        self.log("val_loss", loss)
        self.log("val_acc", acc, prog_bar=True)

    def configure_optimizers(self) -> t.Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        if "schedulers" not in registry():
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.hparams.epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "epoch"},
        }


class GradNormMonitor(loopkit.Callback):
    """Logs the global gradient norm on the step hook (gradients are unscaled by then)."""

    def on_before_optimizer_step(self, trainer: t.Any, pl_module: t.Any, optimizer: t.Any) -> None:
        norms = [p.grad.detach().norm() for p in pl_module.parameters() if p.grad is not None]
        if norms:
            pl_module.log("grad_norm", torch.stack(norms).norm())


class BestEpoch(loopkit.Callback):
    """Keeps the epoch with the best validation accuracy (read from ``callback_metrics``)."""

    def __init__(self) -> None:
        self.best: tuple[float, int] | None = None

    def on_validation_end(self, trainer: t.Any) -> None:
        acc = trainer.callback_metrics.get("val_acc")
        if acc is not None and (self.best is None or acc.item() > self.best[0]):
            self.best = (acc.item(), trainer.current_epoch)

    def on_fit_end(self, trainer: t.Any) -> None:
        if self.best is not None and trainer.is_global_zero:
            acc, epoch = self.best
            print(f"best validation accuracy: {acc:.1%} (epoch {epoch})")


def _available() -> dict[str, bool]:
    reg = registry()
    return {name: name in reg for name in OPTIONAL}


def _report_plugins(have: dict[str, bool]) -> None:
    missing: dict[str, list[str]] = {}
    for name, what in OPTIONAL.items():
        if have[name]:
            print(f"  on:  {name:<13} {what}")
        else:
            missing.setdefault(KNOWN[name][1], []).append(name)
            print(f"  off: {name:<13} {what} (not installed)")
    for dist, names in missing.items():
        folder = dist.removeprefix("loopkit-")
        print(
            f"  for {', '.join(names)}: pip install -c constraints.txt -e plugins/{folder}"
            f"   ({dist})"
        )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _tensorboard_command(logs: Path) -> str:
    # ./dev demo installs tensorboard into the demo's own environment, maybe not on PATH.
    local = Path(sys.executable).parent / "tensorboard"
    exe = _shown(local) if local.exists() else "tensorboard"
    return f"{exe} --logdir {_shown(logs)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--root-dir", type=Path, default=Path.cwd())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: pass a positive number of epochs")

    have = _available()
    print("loopkit demo: a spiral classifier trained by loopkit.Trainer")
    _report_plugins(have)

    # A model this small runs fastest on one thread; more only contend, worst on a busy machine.
    torch.set_num_threads(1)
    loopkit.Fabric.seed_everything(args.seed)
    train_loader = DataLoader(spirals(4096, seed=args.seed), batch_size=64, shuffle=True)
    val_loader = DataLoader(spirals(1024, seed=args.seed + 1), batch_size=256)
    module = SpiralClassifier(epochs=args.epochs)

    loggers = [name for name in ("tensorboard", "console") if have[name]]
    trainer = loopkit.Trainer(
        accelerator="cpu",
        precision="bf16-mixed" if have["bf16-mixed"] else "32-true",
        max_epochs=args.epochs,
        logger=loggers or False,
        log_every_n_steps=32,
        callbacks=[GradNormMonitor(), BestEpoch()],
        plugins=["lr_monitor"] if have["lr_monitor"] else None,
        default_root_dir=args.root_dir,
        enable_checkpointing=False,
    )
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    seconds = time.perf_counter() - start

    print(f"trained {trainer.global_step} steps in {seconds:.1f} s")
    if have["tensorboard"]:
        logs = Path(trainer.log_dir)
        print(f"logs: {logs}")
        print(f"open them with: {_tensorboard_command(logs.parent)}")
    else:
        print("no logs written: install loopkit-logging for TensorBoard, console logs and a bar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
