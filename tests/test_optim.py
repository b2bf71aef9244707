"""configure_optimizers return forms: every accepted one parsed, every malformed one explained."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, same_weights, trainer, twin
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from loopkit.optim import LRSchedulerConfig, OptimizerConfigError, parse_configure_optimizers
from loopkit.plugins import Registry


@pytest.fixture
def opts() -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    model = nn.Linear(2, 2)
    return torch.optim.Adam(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1)


def test_one_optimizer(opts: t.Any) -> None:
    assert parse_configure_optimizers(opts[0]) == ([opts[0]], [])


@pytest.mark.parametrize("container", [list, tuple])
def test_several_optimizers(opts: t.Any, container: type) -> None:
    assert parse_configure_optimizers(container(opts)) == (list(opts), [])


def test_optimizers_and_one_scheduler(opts: t.Any) -> None:
    sched = StepLR(opts[0], 1)
    for second in (sched, [sched]):
        optimizers, configs = parse_configure_optimizers(([opts[0]], second))
        assert optimizers == [opts[0]]
        assert configs == [LRSchedulerConfig(sched, opt_idx=0)]


def test_optimizers_and_mixed_scheduler_list(opts: t.Any) -> None:
    # reference 002: [Adam, SGD], [{'scheduler': ReduceLROnPlateau, 'monitor': ...}, LambdaLR]
    plateau = ReduceLROnPlateau(opts[0], mode="max", patience=7)
    lam = LambdaLR(opts[1], lambda e: 0.9**e)
    config = {"scheduler": plateau, "monitor": "val_recall", "interval": "epoch", "frequency": 1}
    optimizers, configs = parse_configure_optimizers((list(opts), [config, lam]))
    assert optimizers == list(opts)
    assert configs[0] == LRSchedulerConfig(
        plateau, monitor="val_recall", reduce_on_plateau=True, opt_idx=0
    )
    assert configs[1] == LRSchedulerConfig(lam, opt_idx=1)


def test_one_config_dict_as_second_element(opts: t.Any) -> None:
    # reference 001: optimizers, {'scheduler': ReduceLROnPlateau(opt1, ...), 'monitor': ...}
    plateau = ReduceLROnPlateau(opts[0])
    _, configs = parse_configure_optimizers(
        (list(opts), {"scheduler": plateau, "monitor": "metric_to_track"})
    )
    assert configs == [
        LRSchedulerConfig(plateau, monitor="metric_to_track", reduce_on_plateau=True, opt_idx=0)
    ]


def test_all_config_keys(opts: t.Any) -> None:
    sched = StepLR(opts[1], 1)
    config = {
        "scheduler": sched, "interval": "step", "frequency": 3, "monitor": "loss",
        "strict": False, "name": "my_lr",
    }  # fmt: skip
    _, configs = parse_configure_optimizers((list(opts), [config]))
    assert configs == [LRSchedulerConfig(sched, "step", 3, "loss", False, "my_lr", False, 1)]


def test_plateau_without_monitor_defaults_to_val_loss(opts: t.Any) -> None:
    # reference 002: "'monitor': 'val_recall', # Default: val_loss"
    _, configs = parse_configure_optimizers(([opts[0]], [ReduceLROnPlateau(opts[0])]))
    assert configs[0].monitor == "val_loss" and configs[0].reduce_on_plateau


def test_dict_form(opts: t.Any) -> None:
    sched = StepLR(opts[0], 1)
    optimizers, configs = parse_configure_optimizers(
        {"optimizer": opts[0], "lr_scheduler": sched, "monitor": "val_acc"}
    )
    assert optimizers == [opts[0]]
    assert configs == [LRSchedulerConfig(sched, monitor="val_acc", opt_idx=0)]
    _, configs = parse_configure_optimizers(
        {"optimizer": opts[0], "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    )
    assert configs == [LRSchedulerConfig(sched, interval="step", opt_idx=0)]
    assert parse_configure_optimizers({"optimizer": opts[1]}) == ([opts[1]], [])


def test_list_of_dicts(opts: t.Any) -> None:
    sched = StepLR(opts[1], 1)
    optimizers, configs = parse_configure_optimizers(
        [{"optimizer": opts[0]}, {"optimizer": opts[1], "lr_scheduler": sched}]
    )
    assert optimizers == list(opts)
    assert configs == [LRSchedulerConfig(sched, opt_idx=1)]


def test_none_warns_and_trains_nothing() -> None:
    with pytest.warns(UserWarning, match="returned None"):
        assert parse_configure_optimizers(None) == ([], [])

    class Nothing(Regressor):
        def configure_optimizers(self) -> None:
            return None

    model = Nothing()
    before = twin(model)
    with pytest.warns(UserWarning, match="returned None"):
        trainer(max_epochs=1).fit(model, data(n=16))
    assert same_weights(model, before)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda o: "adam", r"returned 'adam': a str is not one of the accepted forms"),
        (lambda o: [o[0], 3], r"returned \[Adam, 3\]: 3 is not an optimizer"),
        (lambda o: {"optimizer": o[0], "scheduler": 1}, r"unknown key\(s\) 'scheduler'"),
        (lambda o: {"lr_scheduler": StepLR(o[0], 1)}, r"an optimizer dict has no 'optimizer'"),
        (lambda o: {"optimizer": "sgd"}, r"'optimizer' holds 'sgd', not an optimizer"),
        (
            lambda o: ([o[0]], [{"scheduler": StepLR(o[0], 1), "intervall": "step"}]),
            r"unknown key\(s\) 'intervall' in a scheduler config; accepted keys are 'scheduler'",
        ),
        (lambda o: ([o[0]], [{"interval": "step"}]), r"scheduler config dict has no 'scheduler'"),
        (
            lambda o: ([o[0]], [{"scheduler": StepLR(o[0], 1), "interval": "batch"}]),
            r"interval='batch'; use 'epoch' or 'step'",
        ),
        (
            lambda o: ([o[0]], [{"scheduler": StepLR(o[0], 1), "frequency": 0}]),
            r"frequency=0; use a positive int",
        ),
        (lambda o: ([o[0]], ["steplr"]), r"'steplr' is not a learning-rate scheduler"),
        (lambda o: ([o[0], "x"], []), r"must hold optimizers, it holds 'x'"),
        (
            lambda o: ([o[0]], [StepLR(o[1], 1)]),
            r"StepLR drives an optimizer that configure_optimizers\(\) did not return",
        ),
        (
            lambda o: ([o[0]], [{"scheduler": StepLR(o[0], 1), "opt_idx": 4}]),
            r"opt_idx=4 but 1 optimizer\(s\) were returned",
        ),
    ],
)
def test_malformed_returns(opts: t.Any, returned: t.Any, message: str) -> None:
    with pytest.raises(OptimizerConfigError, match=message) as info:
        parse_configure_optimizers(returned(opts))
    assert "configure_optimizers() may return:" in str(info.value)  # what is accepted


def test_malformed_return_through_the_trainer() -> None:
    class Bad(Regressor):
        def configure_optimizers(self) -> t.Any:
            return {"optimizer": torch.optim.SGD(self.parameters(), lr=0.1), "sched": None}

    with pytest.raises(OptimizerConfigError, match=r"returned \{'optimizer': SGD, 'sched': None\}"):
        trainer(max_epochs=1).fit(Bad(), data(n=8))


class WithScheduler(Regressor):
    def configure_optimizers(self) -> t.Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [StepLR(opt, 1)]


def test_schedulers_need_the_scheduling_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loopkit.trainer.registry", lambda: Registry([]))
    with pytest.raises(RuntimeError, match="pip install loopkit-schedulers"):
        trainer(max_epochs=1).fit(WithScheduler(), data(n=8))


def test_manual_optimization_ignores_scheduler_settings_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("loopkit.trainer.registry", lambda: Registry([]))  # no plugin needed

    class Manual(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self) -> t.Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [{"scheduler": StepLR(opt, 1), "interval": "step"}]

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            assert isinstance(self.lr_schedulers(), StepLR)

    with pytest.warns(UserWarning, match="manual optimization ignores scheduler settings") as rec:
        trainer(max_epochs=2).fit(Manual(), data(n=16))
    assert len([w for w in rec if "ignores scheduler" in str(w.message)]) == 1
