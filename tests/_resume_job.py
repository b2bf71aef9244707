"""A small training run for the checkpoint and resume tests: importable, and runnable as a job.

Everything random a real run has is here: shuffled training batches (the global torch RNG), a
dataset that augments in ``__getitem__`` (torch), dropout, noise from python's ``random`` and
numpy in ``training_step``, validation on shuffled data in the middle of epochs, Adam (optimizer
state), a stateful callback, and two ``ModelCheckpoint`` callbacks (one ranked by a metric).

As a job (``python tests/_resume_job.py ROOT [--kill BATCH:KIND] [--out FILE]``) it fits with
``ckpt_path="last"`` under ``ROOT`` and, with ``--kill``, sends itself SIGKILL at that point:
nothing is cleaned up, no ``finally`` runs, as when the machine loses the process. Kinds:

* ``step``: inside ``training_step`` of total batch BATCH (0-based)
* ``before_step``: after backward, before the optimizer step of that batch
* ``after_step``: after the optimizer step, before the batch's checkpoint
* ``save_topk``, ``save_last``: half-way through writing that batch's checkpoint file
* ``rename``: the batch's ``last.ckpt`` written and fsynced, not yet renamed into place
* ``validation``: inside the validation that follows batch BATCH
* ``epoch_end``: in ``on_train_epoch_end`` after batch BATCH (the epoch's last)
* ``epoch_start``: in ``on_train_epoch_start`` of the epoch whose first batch is BATCH

It prints ``resumed-at <global_step>`` when it starts and writes the final module and optimizer
state to ``--out`` (``torch.save``) when training ends.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import sys
import typing as t
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import loopkit
from loopkit import Callback, ModelCheckpoint

EPOCHS = 4
SAMPLES = 24
BATCH = 4  # 6 batches per epoch, 24 in all
BATCHES_PER_EPOCH = SAMPLES // BATCH
VAL_EVERY = 3  # validation after batches 2 and 5 of every epoch

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the dev environments
    np = None  # type: ignore[assignment]


class Augmented(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed samples with random noise added when read (uses the global torch RNG)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.01 * torch.randn(4), self.y[i]


class Net(loopkit.LoopModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        _kill_if("step", self.trainer.progress.total_batches)
        x, y = batch
        jitter = random.random() * 1e-3
        if np is not None:
            jitter += float(np.random.rand()) * 1e-3
        loss = nn.functional.mse_loss(self(x), y) * (1.0 + jitter)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: t.Any, batch_idx: int) -> None:
        _kill_if("validation", self.trainer.progress.total_batches - 1)
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> t.Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Counter(Callback):
    """A callback with state: how many batches it has seen, summed losses."""

    def __init__(self) -> None:
        self.batches = 0
        self.loss_sum = 0.0

    def on_train_batch_end(self, trainer: t.Any, outputs: t.Any) -> None:
        self.batches += 1
        if outputs is not None:  # manual optimization returns nothing
            self.loss_sum += float(outputs["loss"])

    def on_before_optimizer_step(self, trainer: t.Any) -> None:
        _kill_if("before_step", trainer.progress.total_batches)

    def on_optimizer_step(self, trainer: t.Any) -> None:
        _kill_if("after_step", trainer.progress.total_batches)

    def on_train_epoch_start(self, trainer: t.Any) -> None:
        _kill_if("epoch_start", trainer.progress.total_batches)

    def on_train_epoch_end(self, trainer: t.Any) -> None:
        _kill_if("epoch_end", trainer.progress.total_batches - 1)

    def state_dict(self) -> dict[str, t.Any]:
        return {"batches": self.batches, "loss_sum": self.loss_sum}

    def load_state_dict(self, state_dict: t.Any) -> None:
        self.batches = state_dict["batches"]
        self.loss_sum = state_dict["loss_sum"]


def loaders(seed: int = 0) -> tuple[DataLoader[t.Any], DataLoader[t.Any]]:
    train = DataLoader(Augmented(SAMPLES, seed), batch_size=BATCH, shuffle=True)
    val = DataLoader(Augmented(8, seed + 1), batch_size=4, shuffle=True)
    return train, val


def make_trainer(root: str | os.PathLike[str], **kwargs: t.Any) -> loopkit.Trainer:
    callbacks = kwargs.pop("callbacks", None)
    if callbacks is None:
        callbacks = [
            Counter(),
            ModelCheckpoint(every_n_train_steps=1, save_last=True),
            ModelCheckpoint(
                monitor="val_loss", save_top_k=2, filename="{epoch}-{step}-{val_loss:.4f}"
            ),
        ]
    options: dict[str, t.Any] = {
        "accelerator": "cpu",
        "max_epochs": EPOCHS,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
        "val_check_interval": VAL_EVERY,
        "callbacks": callbacks,
    }
    options.update(kwargs)
    return loopkit.Trainer(**options)


def seed_all(seed: int = 7) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if np is not None:
        np.random.seed(seed)


def final_state(module: nn.Module, trainer: loopkit.Trainer) -> dict[str, t.Any]:
    return {
        "module": {k: v.clone() for k, v in module.state_dict().items()},
        "optimizers": [o.optimizer.state_dict() for o in trainer.optimizers],
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "callbacks": [cb.state_dict() for cb in trainer.callbacks if isinstance(cb, Counter)],
    }


# -- killing ------------------------------------------------------------------------------------

_KILL: tuple[int, str] | None = None
_TRAINER: loopkit.Trainer | None = None


def _kill_if(kind: str, batch: int) -> None:
    if _KILL is not None and (batch, kind) == _KILL:
        _die()


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_file_kills() -> None:
    """Patch torch.save and os.replace so a kill can land in the middle of a checkpoint write."""
    real_save, real_replace = torch.save, os.replace

    def due(kind: str) -> bool:
        if _KILL is None or _TRAINER is None:
            return False
        batch = _TRAINER.global_step - 1  # every batch steps once: global_step = batches done
        return (batch, kind) == _KILL

    def save(obj: t.Any, f: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        # atomic_save writes through os.fdopen: the file object's name is its descriptor.
        fileno = getattr(f, "fileno", None)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fileno()}")) if fileno else ""
        # Temporary files: ".last.ckpt.<random>.tmp", ".epoch=E-step=S.ckpt.<random>.tmp"
        # (every step) and ".epoch=E-step=S-val_loss=<v>.ckpt.<random>.tmp" (ranked by val_loss).
        kind = "save_last" if name.startswith(".last.ckpt.") else "save_topk"
        if name.endswith(".tmp") and "val_loss" not in name and due(kind):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()
        real_save(obj, f, *args, **kwargs)

    def replace(src: t.Any, dst: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        if os.path.basename(os.fspath(dst)) == "last.ckpt" and due("rename"):
            _die()
        real_replace(src, dst, *args, **kwargs)

    torch.save = save  # type: ignore[assignment]
    os.replace = replace


def main(argv: list[str] | None = None) -> None:
    global _KILL, _TRAINER
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--kill", default=None, help="BATCH:KIND")
    parser.add_argument("--out", default=None)
    parser.add_argument("--fresh", action="store_true", help="no ckpt_path (uninterrupted run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.kill:
        batch, kind = args.kill.split(":")
        _KILL = (int(batch), kind)
        _arm_file_kills()
    resuming = not args.fresh and Path(args.root, "checkpoints", "last.ckpt").exists()
    # A resumed run is seeded differently on purpose: what it continues with must come from the
    # checkpoint (RNG states included), not from the seed.
    seed_all(123 if resuming else 7)
    module = Net()
    train, val = loaders()
    trainer = make_trainer(args.root)
    _TRAINER = trainer

    class Report(Callback):
        def on_train_start(self, trainer: t.Any) -> None:
            print(f"resumed-at {trainer.global_step}", flush=True)

    trainer.fabric.bus.connect(Report())
    trainer.fit(module, train, val, ckpt_path=None if args.fresh else "last")
    if args.out:
        torch.save(final_state(module, trainer), args.out)


if __name__ == "__main__":
    main()
