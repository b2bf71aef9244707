"""Warm-up: the references' ``optimizer_step`` override, and ``linear_warmup`` (torch's schedulers).

Both references warm the learning rate up in an ``optimizer_step`` override::

    if self.trainer.global_step < 500:
        lr_scale = min(1., float(self.trainer.global_step + 1) / 500.)
        for pg in optimizer.param_groups:
            pg['lr'] = lr_scale * self.hparams.learning_rate

so step ``k`` (0-based) uses ``lr * min(1, (k + 1) / N)``. The tests use N = 5.
"""

from __future__ import annotations

import math
import typing as t

import pytest
import torch
from _schedulers_util import Net, fit
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau, StepLR

from loopkit_schedulers import linear_warmup

WARMUP, LR = 5, 0.4


def documented(step: int) -> float:
    """The references' formula, evaluated as they write it."""
    lr_scale = min(1.0, float(step + 1) / WARMUP)
    return lr_scale * LR


class Recorder(Net):
    """Records the learning rate every optimizer step really uses (after any override set it)."""

    def __init__(self, configure: t.Any) -> None:
        super().__init__(configure)
        self.save_hyperparameters({"learning_rate": LR})
        self.used: list[float] = []

    def on_before_optimizer_step(self, optimizer: t.Any) -> None:
        self.used.append(optimizer.param_groups[0]["lr"])


def plain_sgd(m: Net) -> t.Any:
    return SGD(m.a.parameters(), lr=LR)


class Warmup001(Recorder):
    # Reference 001, "Here we add a learning rate warm-up" (500 steps there).
    def optimizer_step(  # type: ignore[override]
        self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
        on_tpu=False, using_native_amp=False, using_lbfgs=False,
    ):  # fmt: skip
        if self.trainer.global_step < WARMUP:
            lr_scale = min(1.0, float(self.trainer.global_step + 1) / WARMUP)
            for pg in optimizer.param_groups:
                pg["lr"] = lr_scale * self.hparams.learning_rate
        optimizer.step(closure=optimizer_closure)


class Warmup002(Recorder):
    # Reference 002, "Here we add a learning-rate warm up": the earliest signature, which steps
    # and zeroes the optimizer itself.
    def optimizer_step(  # type: ignore[override]
        self, current_epoch, batch_nb, optimizer, optimizer_i, second_order_closure=None
    ):
        if self.trainer.global_step < WARMUP:
            lr_scale = min(1.0, float(self.trainer.global_step + 1) / WARMUP)
            for pg in optimizer.param_groups:
                pg["lr"] = lr_scale * self.hparams.learning_rate
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("cls", [Warmup001, Warmup002])
def test_the_references_optimizer_step_warmup_gives_the_documented_rate(cls: type) -> None:
    module = cls(plain_sgd)
    run = fit(module, epochs=2)
    assert run.global_step == 14
    assert module.used == [documented(k) for k in range(14)]
    assert module.used[:WARMUP] == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4])
    assert module.used[WARMUP:] == [LR] * (14 - WARMUP)


def test_override_warmup_composes_with_a_scheduler_after_it() -> None:
    # The override writes the rate for the first steps; an epoch scheduler then decays it.
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=LR)
        return [opt], [StepLR(opt, 1, 0.5)]

    module = Warmup001(configure)
    fit(module, epochs=3)
    assert module.used[:WARMUP] == [documented(k) for k in range(WARMUP)]
    assert module.used[7::7] == [0.2, 0.1]  # epochs 1 and 2 start after one and two decays


def test_linear_warmup_follows_the_documented_formula_then_the_scheduler() -> None:
    cosine_steps = 9

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=LR)
        schedule = linear_warmup(opt, WARMUP, CosineAnnealingLR(opt, T_max=cosine_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    module = Recorder(configure)
    fit(module, epochs=2)
    # Torch's LinearLR computes the rate recursively, so equal to the formula up to rounding.
    assert module.used[:WARMUP] == pytest.approx([documented(k) for k in range(WARMUP)], 1e-12)
    cosine = [LR * (1 + math.cos(math.pi * j / cosine_steps)) / 2 for j in range(14 - WARMUP)]
    assert module.used[WARMUP:] == pytest.approx(cosine, rel=1e-9, abs=1e-12)


def test_linear_warmup_alone_holds_the_rate_after_warming_up() -> None:
    opt = SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = linear_warmup(opt, WARMUP)
    used = []
    for _ in range(9):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert used == pytest.approx([documented(k) for k in range(9)], rel=1e-12)


def test_linear_warmup_start_factor_and_one_step() -> None:
    opt = SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = linear_warmup(opt, 3, start_factor=0.1)
    used = []
    for _ in range(4):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert used == pytest.approx([0.1, 0.55, 1.0, 1.0])
    opt = SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    linear_warmup(opt, 1)
    assert opt.param_groups[0]["lr"] == 1.0  # one warm-up step: the full rate at once


def test_linear_warmup_errors_name_what_was_passed() -> None:
    opt = SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    other = SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"warmup_steps=0\): pass a positive int"):
        linear_warmup(opt, 0)
    with pytest.raises(ValueError, match=r"start_factor=0.0\): pass a value in \(0, 1\]"):
        linear_warmup(opt, 5, start_factor=0.0)
    with pytest.raises(TypeError, match="cannot run a plateau scheduler"):
        linear_warmup(opt, 5, ReduceLROnPlateau(opt))
    with pytest.raises(ValueError, match="'then' drives another optimizer"):
        linear_warmup(opt, 5, StepLR(other, 1))
