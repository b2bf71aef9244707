"""Shared pieces of loopkit-logging's tests: a short Fabric training run and file readers."""

from __future__ import annotations

import csv
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import typing as t
from pathlib import Path

import pytest
import torch
from torch import nn

import loopkit

# A Trainer run: a regressor logging train_loss/val_loss with prog_bar=True, 4 batches per epoch,
# 2 epochs. Run in-process through fit() below, and as a script in subprocesses.
TRAINING = textwrap.dedent(
    """
    import torch, loopkit
    from torch.utils.data import DataLoader, TensorDataset


    class Regressor(loopkit.LoopModule):
        def __init__(self, lr=0.05, width=3, fail_at=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(width, 1)
            self.losses = []

        def training_step(self, batch, batch_idx):
            if len(self.losses) == self.hparams.fail_at:
                raise RuntimeError(f"boom at batch {len(self.losses)}")
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, prog_bar=True)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


    def fit(logger, fail_at=None, **trainer_kwargs):
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
        module = Regressor(fail_at=fail_at)
        trainer = loopkit.Trainer(
            accelerator="cpu", max_epochs=2, logger=logger, log_every_n_steps=1,
            enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs,
        )
        trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
        return trainer, module
    """
)
_training: dict[str, t.Any] = {}
exec(compile(TRAINING, "<training>", "exec"), _training)
#: fit(logger, fail_at=None, **trainer_kwargs) -> (trainer, module), from TRAINING.
fit: t.Callable[..., t.Any] = _training["fit"]


def fabric_run(
    loggers: t.Any, steps: int = 8, raise_at: int | None = None, seed: int = 0
) -> list[float]:
    """Train a tiny regressor for ``steps`` steps, logging ``loss`` (and, from step 4, ``grad``).

    Returns the losses logged, in order. With ``raise_at``, raises RuntimeError at that step
    before logging it.
    """
    torch.manual_seed(seed)
    fabric = loopkit.Fabric(accelerator="cpu", loggers=loggers)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    losses: list[float] = []
    for step in range(steps):
        if step == raise_at:
            raise RuntimeError(f"boom at step {step}")
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        metrics = {"loss": loss.detach()}
        if step >= 4:  # a metric that appears midway
            metrics["grad"] = model.weight.grad.norm()
        fabric.log_dict(metrics, step=step)
        losses.append(loss.item())
    for lg in fabric.loggers:
        lg.finalize("success")
    return losses


def f32(value: float) -> float:
    """``value`` rounded to float32, as TensorBoard stores scalars."""
    return torch.tensor(value, dtype=torch.float32).item()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) pairs of ``tag`` read back from the event files in ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def run_script(
    code: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (stdout/stderr piped)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=120,
    )


def hparams_of(log_dir: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    out: dict[str, object] = {}
    for key, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def run_in_pty(code: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``code`` with stdin/stdout/stderr on a pseudo-terminal; return (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env={**os.environ, **(env or {})},
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.fixture(autouse=True)
def _isolated_log_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's own LOOPKIT_LOG_DIR / rank variables must not leak into the tests.
    for key in ("LOOPKIT_LOG_DIR", "LOOPKIT_LOG_JSON", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
