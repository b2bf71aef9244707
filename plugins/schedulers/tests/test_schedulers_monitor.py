"""ReduceLROnPlateau in loopkit.Trainer: which value of ``monitor`` it gets; a missing monitor."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _schedulers_util import Net, fit
from torch.optim import SGD
from torch.optim.lr_scheduler import ReduceLROnPlateau

from loopkit_schedulers import MissingMonitorError


class RecordingPlateau(ReduceLROnPlateau):
    """A ReduceLROnPlateau that remembers every value it was stepped with."""

    def __init__(self, optimizer: torch.optim.Optimizer, **kwargs: t.Any) -> None:
        super().__init__(optimizer, **kwargs)
        self.seen: list[float] = []

    def step(self, metrics: t.Any, epoch: int | None = None) -> None:  # type: ignore[override]
        self.seen.append(float(metrics))
        super().step(metrics)


class LogsTrainingLoss(Net):
    def training_step(self, batch, batch_idx, optimizer_idx=0):  # type: ignore[no-untyped-def]
        loss = super().training_step(batch, batch_idx, optimizer_idx)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


def plateau_config(**keys: t.Any) -> t.Callable[[Net], t.Any]:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [{"scheduler": RecordingPlateau(opt, patience=0), **keys}]

    return configure


def test_a_monitor_never_logged_is_an_error_naming_it_and_the_logged_metrics() -> None:
    module = LogsTrainingLoss(plateau_config())  # monitor defaults to val_loss; no validation
    with pytest.raises(MissingMonitorError) as info:
        fit(module, epochs=2)
    message = str(info.value)
    assert "monitors 'val_loss', which was never logged" in message
    assert "'train_loss', 'train_loss_epoch', 'train_loss_step'" in message
    assert "self.log('val_loss', value)" in message and "'strict': False" in message
    assert len(module.lrs) == 7  # raised at the end of the first epoch


def test_a_missing_monitor_with_strict_false_warns_and_skips_the_step() -> None:
    module = LogsTrainingLoss(plateau_config(monitor="val_acc", strict=False))
    with pytest.warns(UserWarning, match="monitors 'val_acc', which was never logged") as rec:
        run = fit(module, epochs=3)
    assert len([w for w in rec if "val_acc" in str(w.message)]) == 3  # one per epoch end
    plateau = run.lr_scheduler_configs[0].scheduler
    assert plateau.seen == [] and plateau.last_epoch == 0
    assert {row[0] for row in module.lrs} == {1.0}


def test_training_metrics_are_used_when_nothing_validates() -> None:
    seen_by_callback: list[float] = []

    class Watch:
        def on_train_epoch_end(self, trainer: t.Any) -> None:
            seen_by_callback.append(float(trainer.callback_metrics["train_loss"]))

    module = LogsTrainingLoss(plateau_config(monitor="train_loss"))
    run = fit(module, epochs=3, callbacks=[Watch()])
    plateau = run.lr_scheduler_configs[0].scheduler
    # The epoch's mean training loss (what the module logged with on_epoch=True), each epoch.
    assert plateau.seen == seen_by_callback
    assert len(set(plateau.seen)) == 3


def test_step_interval_plateau_waits_for_the_validation_after_its_batch() -> None:
    class ValidatesStep(Net):
        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.log("val_loss", float(self.trainer.global_step))

    module = ValidatesStep(plateau_config(interval="step", frequency=2))
    run = fit(
        module, epochs=2, validate=True, val_check_interval=2, limit_train_batches=6
    )
    plateau = run.lr_scheduler_configs[0].scheduler
    # Validation runs after batches 1, 3, 5 of each epoch, right after the optimizer steps
    # that make the scheduler due: each step got the value of that validation run.
    assert plateau.seen == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


def test_step_interval_plateau_without_validation_gets_its_own_batch_value() -> None:
    class LogsIndex(Net):
        def training_step(self, batch, batch_idx, optimizer_idx=0):  # type: ignore[no-untyped-def]
            self.log("batch_metric", float(10 * self.current_epoch + batch_idx))
            return super().training_step(batch, batch_idx, optimizer_idx)

    module = LogsIndex(plateau_config(interval="step", monitor="batch_metric"))
    run = fit(module, epochs=2, validate=True)  # validation (logging nothing) at epoch ends
    plateau = run.lr_scheduler_configs[0].scheduler
    assert plateau.seen == [float(10 * e + b) for e in range(2) for b in range(7)]


def test_validation_metric_is_fresh_at_each_epoch_end() -> None:
    script = {"val_loss": [5.0, 4.0, 4.0, 4.0]}
    module = LogsTrainingLoss(plateau_config(), val_script=script)
    run = fit(module, epochs=4, validate=True)
    plateau = run.lr_scheduler_configs[0].scheduler
    assert plateau.seen == script["val_loss"]
    # patience=0: the two epochs without improvement each cut the rate by 10.
    assert [row[0] for row in module.lrs[::7]] == pytest.approx([1.0, 1.0, 1.0, 0.1])
    assert module.lrs[-1][0] == pytest.approx(0.1)
    assert plateau.get_last_lr() == pytest.approx([0.01])
