"""self.log under the Trainer: when values are written, how they are reduced, where they go."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, trainer

import loopkit
from loopkit.plugins import Registry
from loopkit.strategy import SingleDeviceStrategy


class ListLogger:
    """A logger object: records what the trainer writes."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.hparams: list[dict[str, t.Any]] = []
        self.status: list[str] = []
        self.saves = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: dict[str, t.Any]) -> None:
        self.hparams.append(dict(params))

    def finalize(self, status: str) -> None:
        self.status.append(status)

    def save(self) -> None:
        self.saves += 1

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, row[name]) for step, row in self.rows if name in row]


class Logs(Regressor):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.save_hyperparameters()

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        self.log("batch_idx", float(batch_idx))
        self.log("both", float(batch_idx), on_step=True, on_epoch=True, prog_bar=True)
        self.log("peak", float(batch_idx), on_step=False, on_epoch=True, reduce_fx="max")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: t.Any, batch_idx: int) -> None:
        x, _ = batch
        self.log("val_weighted", float(batch_idx), batch_size=x.shape[0])
        self.log("val_sum", 1.0, reduce_fx="sum")


def test_step_values_every_n_steps_and_epoch_values_at_the_end() -> None:
    lg = ListLogger()
    tr = trainer(max_epochs=2, logger=lg, log_every_n_steps=2)
    # 20 samples in batches of 8: 8, 8, 4 (weights for the weighted mean)
    tr.fit(Logs(), data(n=24, batch_size=8), data(n=20, batch_size=8))
    # training_step: on_step by default, written every 2 counted steps, step = count - 1
    assert lg.series("batch_idx") == [(1, 1.0), (3, 0.0), (5, 2.0)]
    assert lg.series("both_step") == [(1, 1.0), (3, 0.0), (5, 2.0)]
    # on_epoch: reduced at the end of each training epoch, written at the epoch's last step
    assert lg.series("both_epoch") == [(2, 1.0), (5, 1.0)]
    assert lg.series("peak") == [(2, 2.0), (5, 2.0)]
    # validation_step: on_epoch by default, mean weighted by batch_size
    weighted = (0 * 8 + 1 * 8 + 2 * 4) / 20
    assert lg.series("val_weighted") == [(2, pytest.approx(weighted)), (5, pytest.approx(weighted))]
    assert lg.series("val_sum") == [(2, 3.0), (5, 3.0)]
    # every written row carries the epoch, as Lightning's do
    assert all("epoch" in row for _, row in lg.rows)
    assert "both" not in {k for _, row in lg.rows for k in row}


def test_callback_logged_and_progress_bar_metrics() -> None:
    tr = trainer(max_epochs=1, logger=False)
    tr.fit(Logs(), data(n=24, batch_size=8), data(n=20, batch_size=8))
    cm = tr.callback_metrics
    assert set(cm) >= {"batch_idx", "both", "both_step", "both_epoch", "peak", "val_weighted"}
    assert all(isinstance(v, torch.Tensor) for v in cm.values())
    assert cm["both"].item() == cm["both_epoch"].item() == 1.0  # after the epoch: the epoch value
    assert cm["both_step"].item() == 2.0
    assert set(tr.progress_bar_metrics) == {"both_step", "both_epoch"}
    assert tr.logged_metrics["peak"].item() == 2.0


def test_monitors_see_epoch_values_in_the_end_hooks() -> None:
    seen: dict[str, float] = {}

    class Monitor(loopkit.Callback):
        def on_validation_end(self, trainer: t.Any, pl_module: t.Any) -> None:
            seen["val"] = float(trainer.callback_metrics["val_weighted"])

        def on_train_epoch_end(self, trainer: t.Any, pl_module: t.Any) -> None:
            seen["train"] = float(trainer.callback_metrics["both_epoch"])

    trainer(max_epochs=1, callbacks=[Monitor()]).fit(Logs(), data(n=24), data(n=16))
    assert seen == {"val": 0.5, "train": 1.0}


def test_logging_in_on_train_epoch_end_defaults_to_the_epoch() -> None:
    class M(Regressor):
        def on_train_epoch_end(self) -> None:
            self.log("epoch_stat", 7.0)

    lg = ListLogger()
    tr = trainer(max_epochs=2, logger=lg)
    tr.fit(M(), data(n=16, batch_size=8))
    assert lg.series("epoch_stat") == [(1, 7.0), (3, 7.0)]
    assert tr.callback_metrics["epoch_stat"].item() == 7.0


def test_logger_lifecycle_hparams_and_status() -> None:
    lg = ListLogger()
    trainer(max_epochs=2, logger=[lg]).fit(Logs(lr=0.25), data(n=16))
    assert lg.hparams == [{"lr": 0.25}]
    assert lg.status == ["success"]
    assert lg.saves == 2  # after each epoch's metrics

    class Boom(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            raise ValueError("bad batch")

    lg = ListLogger()
    with pytest.raises(ValueError, match="bad batch"):
        trainer(max_epochs=1, logger=lg).fit(Boom(), data(n=16))
    assert lg.status == ["failed"]


def test_manual_optimization_counts_every_batch_for_logging() -> None:
    class Manual(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            self.log("i", float(batch_idx))  # no optimizer step at all

    lg = ListLogger()
    trainer(max_epochs=1, logger=lg, log_every_n_steps=1).fit(Manual(), data(n=24, batch_size=8))
    assert lg.series("i") == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_default_logger_is_tensorboard_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loopkit.trainer.registry", lambda: Registry([]))
    assert loopkit.Trainer(max_epochs=1, enable_progress_bar=False).loggers == []
    assert trainer(max_epochs=1, logger=None).loggers == []


def test_default_logger_with_the_logging_plugin(tmp_path: t.Any) -> None:
    pytest.importorskip("loopkit_logging")
    tr = loopkit.Trainer(max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False)
    assert [type(lg).__name__ for lg in tr.loggers] == ["TensorBoardLogger"]
    named = trainer(max_epochs=1, logger="csv", default_root_dir=tmp_path)
    assert [type(lg).__name__ for lg in named.loggers] == ["CSVLogger"]


def test_sync_dist_reduces_through_the_strategy() -> None:
    calls: list[str] = []

    class TwoRanks(SingleDeviceStrategy):
        @property
        def world_size(self) -> int:
            return 2

        def all_reduce(self, data: torch.Tensor, reduce_op: t.Any = "mean") -> torch.Tensor:
            calls.append(reduce_op)
            return data * 2 if reduce_op == "sum" else data + 100

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            self.log("synced", 1.0, sync_dist=True)
            self.log("synced_epoch_sum", 1.0, on_step=False, on_epoch=True, sync_dist=True,
                     reduce_fx="sum")  # fmt: skip
            self.log("synced_mean", float(batch_idx), on_step=False, on_epoch=True, sync_dist=True)
            self.log("local", 1.0)
            return super().training_step(batch, batch_idx)

    tr = trainer(max_epochs=1, strategy=TwoRanks())
    tr.fit(M(), data(n=16, batch_size=8))
    cm = tr.callback_metrics
    assert cm["synced"].item() == 101.0  # step value: all_reduce(mean) at log time
    assert cm["local"].item() == 1.0
    assert cm["synced_epoch_sum"].item() == 4.0  # sum over 2 batches, then summed over ranks
    assert cm["synced_mean"].item() == 0.5  # (sum*2) / (count*2): a mean over all ranks
    assert "sum" in calls and "mean" in calls


def test_log_bad_values() -> None:
    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            self.log("vec", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"self\.log\('vec', \.\.\.\) got a tensor of shape"):
        trainer(max_epochs=1).fit(M(), data(n=8))

    class N(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            self.log("x", 1.0, on_epoch=True, reduce_fx="median")
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="reduce_fx='median'"):
        trainer(max_epochs=1).fit(N(), data(n=8))


def test_log_outside_a_trainer_warns_once() -> None:
    model = Regressor()
    with pytest.warns(UserWarning, match="outside a Trainer run"):
        model.log("x", 1.0)
        model.log("x", 2.0)


def test_validate_returns_what_validation_logged() -> None:
    model = Logs()
    tr = trainer(max_epochs=1)
    out = tr.validate(model, data(n=20, batch_size=8))
    assert out == [{"val_weighted": pytest.approx(0.8), "val_sum": 3.0}]


def test_fewer_batches_than_log_every_n_steps_warns() -> None:
    # 6 batches an epoch and the default log_every_n_steps=50: step values would never be written.
    class Logs(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            loss = self.compute_loss(batch)
            self.log("train_loss", loss)
            return loss

    with pytest.warns(UserWarning) as caught:
        trainer(max_epochs=2, logger=ListLogger()).fit(Logs(), data())
    [warning] = [w for w in caught if "log_every_n_steps" in str(w.message)]  # once
    assert "self.log('train_loss') is written every log_every_n_steps=50 steps" in str(
        warning.message
    )
    assert "an epoch has 6 training batches" in str(warning.message)
    assert warning.filename == __file__  # points at the self.log call


def test_no_log_interval_warning_when_nothing_would_be_missed() -> None:
    import warnings

    class Logs(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            loss = self.compute_loss(batch)
            self.log("train_loss", loss, on_step=self.on_step, on_epoch=not self.on_step)
            return loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Logs.on_step = True
        trainer(max_epochs=1).fit(Logs(), data())  # no logger
        trainer(max_epochs=1, logger=ListLogger(), log_every_n_steps=6).fit(Logs(), data())
        Logs.on_step = False
        trainer(max_epochs=1, logger=ListLogger()).fit(Logs(), data())  # epoch values only
