"""The learning-rate monitor: what it logs, under which names, at which steps."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _schedulers_util import Net, RecordingLogger, batches, fit, lr_of
from torch import nn
from torch.optim import SGD, Adam
from torch.optim.lr_scheduler import ExponentialLR, StepLR

from loopkit import Fabric
from loopkit_schedulers import LearningRateMonitor, Schedulers, learning_rates


def test_trainer_logs_each_rate_at_the_start_and_at_every_stepping() -> None:
    def configure(m: Net) -> t.Any:
        sgd = SGD(m.a.parameters(), lr=1.0)
        adam = Adam(m.b.parameters(), lr=0.1)
        return [sgd, adam], [
            {"scheduler": StepLR(sgd, 1, 0.5), "interval": "step", "frequency": 2},
            {"scheduler": ExponentialLR(adam, 0.5), "name": "adam_lr"},
        ]

    logger = RecordingLogger()
    module = Net(configure)
    fit(module, epochs=2, logger=logger, plugins=["lr_monitor"])
    # Logged at step k: the rate of the k-th optimizer step (0-based), as training_step saw it.
    sgd_rates = logger.series("lr-SGD")
    assert sgd_rates == [(k, 0.5 ** (k // 2)) for k in range(0, 15, 2)]
    for step, value in sgd_rates[:-1]:
        assert module.lrs[2 * step][0] == value  # two training_step calls per batch
    assert logger.series("adam_lr") == [(0, 0.1), (7, 0.05), (14, 0.025)]


def test_several_param_groups_are_logged_one_key_each() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(
            [{"params": m.a.parameters()}, {"params": m.b.parameters(), "lr": 0.5}], lr=1.0
        )
        named = SGD([{"params": [m.b.bias], "name": "bias"}], lr=2.0)
        return [opt, named], [
            {"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 7},
            StepLR(named, 1, 0.5),
        ]

    logger = RecordingLogger()
    fit(Net(configure), epochs=1, logger=logger, plugins=["lr_monitor"])
    assert logger.series("lr-SGD/pg1") == [(0, 1.0), (7, 0.5)]
    assert logger.series("lr-SGD/pg2") == [(0, 0.5), (7, 0.25)]
    assert logger.series("lr-SGD-1") == [(0, 2.0), (7, 1.0)]  # one group: the bare name


def test_group_names_become_keys() -> None:
    opt = SGD([{"params": [nn.Parameter(torch.zeros(1))], "name": "head"},
               {"params": [nn.Parameter(torch.zeros(1))]}], lr=0.3)  # fmt: skip
    schedulers = Schedulers([StepLR(opt, 1)])
    assert learning_rates(schedulers.named_configs) == {"lr-SGD/head": 0.3, "lr-SGD/pg2": 0.3}


def test_two_configs_with_the_same_name_are_an_error() -> None:
    opt = SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    with pytest.raises(ValueError, match="two scheduler configs are named 'lr'"):
        Schedulers([{"scheduler": StepLR(opt, 1), "name": "lr"}, {"scheduler": StepLR(opt, 1),
                                                                  "name": "lr"}])  # fmt: skip
    # An automatic name steps aside for a given one.
    made = Schedulers([StepLR(opt, 1), {"scheduler": StepLR(opt, 1), "name": "lr-SGD"}])
    assert made.names == ["lr-SGD-1", "lr-SGD"]


def test_fabric_loop_logs_through_fabric_log_dict() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = SGD(model.parameters(), lr=1.0)
    logger = RecordingLogger()
    schedulers = Schedulers([{"scheduler": StepLR(opt, 1, 0.5), "interval": "step",
                              "frequency": 3, "name": "lr"}])  # fmt: skip
    fabric = Fabric(accelerator="cpu", loggers=[logger], plugins=[schedulers, "lr_monitor"])
    model, opt = fabric.setup(model, opt)
    fabric.call("on_train_start")
    seen = []
    for batch_idx, (x, y) in enumerate(batches()):
        seen.append(lr_of(opt))
        fabric.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
        fabric.call("on_train_batch_end", batch_idx=batch_idx)
    assert logger.series("lr") == [(0, 1.0), (3, 0.5), (6, 0.25)]
    assert [seen[step] for step, _ in logger.series("lr")] == [1.0, 0.5, 0.25]


def test_no_logger_is_a_warning() -> None:
    with pytest.warns(UserWarning, match="lr_monitor plugin has no logger"):
        Fabric(accelerator="cpu", plugins=[LearningRateMonitor()])


def test_other_subscribers_hear_the_stepping_hook() -> None:
    heard: list[tuple[list[str], int, str]] = []

    class Listener:
        def on_lr_scheduler_step(self, schedulers: t.Any, step: int, interval: str) -> None:
            heard.append((list(schedulers), step, interval))

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [
            {"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 5},
            {"scheduler": ExponentialLR(opt, 0.9), "name": "decay"},
        ]

    fit(Net(configure), epochs=2, callbacks=[Listener()])
    assert heard == [
        (["lr-SGD"], 5, "step"),
        (["decay"], 7, "epoch"),
        (["lr-SGD"], 10, "step"),
        (["decay"], 14, "epoch"),
    ]
