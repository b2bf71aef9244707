"""Schedulers in a hand-written Fabric loop: the loop fires the hooks, the plugin steps.

The loop fires ``on_train_batch_end`` after each batch, ``on_validation_end(metrics=...)`` after
validating and ``on_train_epoch_end`` after each epoch; Fabric fires ``on_optimizer_step`` in
``optimizer.step()`` itself. The learning rates are compared with a plain loop stepping the same
torch schedulers by hand.
"""

from __future__ import annotations

import typing as t

import pytest
import torch
from _schedulers_util import Batch, batches, lr_of
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import ExponentialLR, OneCycleLR, ReduceLROnPlateau, StepLR

from loopkit import Fabric, registry
from loopkit.optim import LRSchedulerConfig
from loopkit_schedulers import MissingMonitorError, Schedulers

Configs = t.Callable[[list[torch.optim.Optimizer]], t.Any]


def models(n: int) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Linear(3, 1) for _ in range(n)]


def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def fabric_loop(
    configs: Configs,
    epochs: int,
    n: int = 1,
    val: list[float] | None = None,
    steps: t.Callable[[int, int], bool] | None = None,
) -> tuple[list[tuple[float, ...]], Schedulers]:
    """The Fabric loop of docs/schedulers.md, recording every optimizer's lr before each step."""
    nets = models(n)
    opts = [SGD(m.parameters(), lr=1.0) for m in nets]
    schedulers = Schedulers(configs(opts))
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    pairs = [fabric.setup(m, o) for m, o in zip(nets, opts)]
    lrs = []
    for epoch in range(epochs):
        for batch_idx, batch in enumerate(batches()):
            for idx, (model, opt) in enumerate(pairs):
                if steps is not None and not steps(idx, batch_idx):
                    continue
                lrs.append(tuple(lr_of(o) for o in opts))
                opt.zero_grad()
                fabric.backward(loss_of(model, batch))
                opt.step()
            fabric.call("on_train_batch_end", batch_idx=batch_idx)
        if val is not None:
            fabric.call("on_validation_end", metrics={"val_loss": val[epoch]})
        fabric.call("on_train_epoch_end")
    return lrs, schedulers


def plain_loop(
    configs: Configs,
    epochs: int,
    after_batch: t.Callable[[t.Any, int, int], None],
    after_epoch: t.Callable[[t.Any, int], None],
    n: int = 1,
    steps: t.Callable[[int, int], bool] | None = None,
) -> list[tuple[float, ...]]:
    """The same training in plain PyTorch; the test's callbacks step the schedulers."""
    nets = models(n)
    opts = [SGD(m.parameters(), lr=1.0) for m in nets]
    made = configs(opts)
    lrs = []
    for epoch in range(epochs):
        for batch_idx, batch in enumerate(batches()):
            for idx, (model, opt) in enumerate(zip(nets, opts)):
                if steps is not None and not steps(idx, batch_idx):
                    continue
                lrs.append(tuple(lr_of(o) for o in opts))
                opt.zero_grad()
                loss_of(model, batch).backward()
                opt.step()
            after_batch(made, epoch, batch_idx)
        after_epoch(made, epoch)
    return lrs


def test_step_and_epoch_intervals_in_a_fabric_loop() -> None:
    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        return [
            {"scheduler": StepLR(opts[0], 1, 0.5), "interval": "step", "frequency": 3},
            {"scheduler": ExponentialLR(opts[1], 0.5), "frequency": 2},  # epoch interval
        ]

    lrs, schedulers = fabric_loop(configs, epochs=4, n=2)
    done = [0]

    def after_batch(made: t.Any, epoch: int, batch_idx: int) -> None:
        done[0] += 1
        if done[0] % 3 == 0:
            made[0]["scheduler"].step()

    def after_epoch(made: t.Any, epoch: int) -> None:
        if (epoch + 1) % 2 == 0:
            made[1]["scheduler"].step()

    assert lrs == plain_loop(configs, 4, after_batch, after_epoch, n=2)
    assert schedulers.optimizer_steps == [28, 28] and schedulers.epochs == 4
    assert schedulers.stepped_batches == 28
    assert schedulers.names == ["lr-SGD", "lr-SGD-1"]


def test_onecycle_per_step_in_a_fabric_loop() -> None:
    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        sched = OneCycleLR(opts[0], max_lr=0.5, total_steps=14)
        return [LRSchedulerConfig(scheduler=sched, interval="step")]

    lrs, _ = fabric_loop(configs, epochs=2)
    expected = plain_loop(
        configs, 2, lambda made, e, b: made[0].scheduler.step(), lambda made, e: None
    )
    assert lrs == expected and len(set(lrs)) == 14


def test_each_scheduler_counts_the_steps_of_its_own_optimizer() -> None:
    # A GAN-like loop: optimizer 1 steps only on odd batches.
    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        return [
            {"scheduler": StepLR(opts[0], 1, 0.5), "interval": "step", "frequency": 2},
            {"scheduler": StepLR(opts[1], 1, 0.5), "interval": "step", "frequency": 2},
        ]

    def odd(idx: int, batch_idx: int) -> bool:
        return idx == 0 or batch_idx % 2 == 1

    lrs, schedulers = fabric_loop(configs, epochs=2, n=2, steps=odd)
    counts = [0, 0]

    def after_batch(made: t.Any, epoch: int, batch_idx: int) -> None:
        for idx in (0, 1):
            if odd(idx, batch_idx):
                counts[idx] += 1
                if counts[idx] % 2 == 0:
                    made[idx]["scheduler"].step()

    assert lrs == plain_loop(configs, 2, after_batch, lambda made, e: None, n=2, steps=odd)
    assert schedulers.optimizer_steps == [14, 6]


def test_reduce_on_plateau_reads_the_metrics_passed_to_the_hooks() -> None:
    val = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0]

    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        return [ReduceLROnPlateau(opts[0], patience=0, factor=0.5)]  # monitor: val_loss

    lrs, schedulers = fabric_loop(configs, epochs=len(val), val=val)
    expected = plain_loop(
        configs, len(val), lambda made, e, b: None, lambda made, e: made[0].step(val[e])
    )
    assert lrs == expected
    assert schedulers.metrics == {"val_loss": 1.0}
    assert [row[0] for row in lrs[::7]] == [1.0, 1.0, 1.0, 0.5, 0.25, 0.25]


def test_step_interval_plateau_in_a_fabric_loop_takes_the_validation_after_its_batch() -> None:
    seen: list[float] = []

    class Recording(ReduceLROnPlateau):
        def step(self, metrics: t.Any, epoch: int | None = None) -> None:  # type: ignore[override]
            seen.append(float(metrics))
            super().step(metrics)

    (net,) = models(1)
    opt = SGD(net.parameters(), lr=1.0)
    plateau = Recording(opt, patience=0)
    schedulers = Schedulers([{"scheduler": plateau, "interval": "step", "monitor": "val"}])
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    model, opt = fabric.setup(net, opt)
    for batch_idx, batch in enumerate(batches()):
        opt.zero_grad()
        fabric.backward(loss_of(model, batch))
        opt.step()
        # A training value first, then the validation run that follows the batch: the plateau
        # step waits for the validation's value.
        fabric.call("on_train_batch_end", batch_idx=batch_idx, metrics={"val": 100.0 + batch_idx})
        fabric.call("on_validation_end", metrics={"val": float(batch_idx)})
    assert seen == [float(b) for b in range(7)]


def test_the_registry_creates_it_with_configs_for_a_fabric_loop() -> None:
    (net,) = models(1)
    opt = SGD(net.parameters(), lr=1.0)
    plugin = registry().create(
        "subscriber", "schedulers", configs={"scheduler": StepLR(opt, 1, 0.5), "interval": "step"}
    )
    fabric = Fabric(accelerator="cpu")
    fabric.add_plugin(plugin)
    assert fabric.get_plugin("schedulers") is plugin
    model, opt = fabric.setup(net, opt)
    for batch_idx, batch in enumerate(batches()[:3]):
        fabric.backward(loss_of(model, batch))
        opt.step()
        fabric.call("on_train_batch_end", batch_idx=batch_idx)
    assert lr_of(opt) == 0.125


def test_a_scheduler_made_on_the_wrapped_optimizer_counts_its_steps() -> None:
    (net,) = models(1)
    fabric = Fabric(accelerator="cpu")
    model, opt = fabric.setup(net, SGD(net.parameters(), lr=1.0))
    sched = StepLR(opt, 1, 0.5)  # on the optimizer fabric.setup returned
    fabric.add_plugin(Schedulers([{"scheduler": sched, "interval": "step", "frequency": 2}]))
    for batch_idx, batch in enumerate(batches()):
        fabric.backward(loss_of(model, batch))
        opt.step()
        opt.zero_grad()
        fabric.call("on_train_batch_end", batch_idx=batch_idx)
    assert sched.last_epoch == 3 and lr_of(opt) == 0.125


def test_a_batch_without_an_optimizer_step_counts_nothing() -> None:
    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        return [{"scheduler": StepLR(opts[0], 1, 0.5), "interval": "step"}]

    # Accumulating by hand: the optimizer steps on every second batch only.
    lrs, schedulers = fabric_loop(configs, epochs=1, steps=lambda idx, b: b % 2 == 1)
    assert [row[0] for row in lrs] == [1.0, 0.5, 0.25]
    assert schedulers.stepped_batches == 3


def test_missing_monitor_in_a_fabric_loop_says_how_to_pass_it() -> None:
    def configs(opts: list[torch.optim.Optimizer]) -> t.Any:
        return [{"scheduler": ReduceLROnPlateau(opts[0]), "monitor": "val_acc"}]

    with pytest.raises(MissingMonitorError, match=r"metrics=\{'val_acc': value\}") as info:
        fabric_loop(configs, epochs=1, val=[1.0])
    assert "the metrics logged are: 'val_loss'" in str(info.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"scheduler": None, "intervall": "step"}, "unknown key(s) 'intervall'"),
        ({"interval": "step"}, "without a 'scheduler' key"),
        ({"scheduler": "StepLR", "interval": "step"}, "'scheduler' holds a str"),
        ("StepLR", "item 0 is a str; pass a learning-rate scheduler"),
        ("interval=batch", "interval='batch'; use 'epoch' or 'step'"),
        ("frequency=0", "frequency=0; use a positive int"),
        ("strict=yes", "strict='yes'; use True or False"),
    ],
)
def test_bad_configs_are_errors_naming_what_was_passed(item: t.Any, message: str) -> None:
    (net,) = models(1)
    opt = SGD(net.parameters(), lr=1.0)
    if isinstance(item, str) and "=" in item:
        key, value = item.split("=")
        item = {"scheduler": StepLR(opt, 1), key: int(value) if value.isdigit() else value}
    with pytest.raises((ValueError, TypeError)) as info:
        Schedulers([item])
    assert message in str(info.value)
    assert "Schedulers(configs=[...]) item 0" in str(info.value)


def test_metrics_must_be_numbers() -> None:
    (net,) = models(1)
    opt = SGD(net.parameters(), lr=1.0)
    fabric = Fabric(accelerator="cpu", plugins=[Schedulers([ReduceLROnPlateau(opt)])])
    with pytest.raises(TypeError, match="'val_loss' is a str, not a number"):
        fabric.call("on_validation_end", metrics={"val_loss": "low"})
    with pytest.raises(TypeError, match="got a list; pass a dict"):
        fabric.call("on_validation_end", metrics=[1.0])
