"""The loggers and the progress bar under loopkit.Trainer (self.log, prog_bar, exceptions)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import TRAINING, f32, fit, hparams_of, read_csv, run_script, scalars

import loopkit
from loopkit_logging import ConsoleLogger, CSVLogger, TensorBoardLogger


def test_tensorboard_scalar_series_and_hparams(tmp_path: Path) -> None:
    logger = TensorBoardLogger(root_dir=tmp_path)
    trainer, module = fit(logger, enable_progress_bar=False)
    losses = module.losses
    assert len(losses) == 8
    assert scalars(logger.log_dir, "train_loss") == [(i, f32(v)) for i, v in enumerate(losses)]
    # Validation (reduced over the epoch) is written at each epoch's last step.
    val = scalars(logger.log_dir, "val_loss")
    assert [s for s, _ in val] == [3, 7]
    assert val[1][1] == f32(trainer.callback_metrics["val_loss"].item())
    assert hparams_of(logger.log_dir) == {"lr": 0.05, "width": 3.0, "fail_at": "None"}


def test_csv_columns_appear_midway_with_values_per_step(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path)
    _, module = fit(logger, enable_progress_bar=False)
    header, rows = read_csv(logger.log_dir / "metrics.csv")
    assert header == ["step", "train_loss", "epoch", "val_loss"]
    train_rows = [r for r in rows if r["train_loss"]]
    assert [int(r["step"]) for r in train_rows] == list(range(8))
    assert [float(r["train_loss"]) for r in train_rows] == pytest.approx(module.losses, rel=1e-6)
    assert [r["epoch"] for r in train_rows] == ["0"] * 4 + ["1"] * 4
    val_rows = [r for r in rows if r["val_loss"]]
    assert [(r["step"], r["epoch"]) for r in val_rows] == [("3", "0"), ("7", "1")]


def test_console_json_lines_carry_step_epoch_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, module = fit(ConsoleLogger(json=True), enable_progress_bar=False)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["event"] == "hyperparameters"
    train = [r for r in records if r["event"] == "metrics" and "train_loss" in r["metrics"]]
    assert [(r["step"], r["epoch"]) for r in train] == [(i, i // 4) for i in range(8)]
    assert [r["metrics"]["train_loss"] for r in train] == pytest.approx(module.losses, rel=1e-6)
    assert records[-1] == {**records[-1], "event": "run finished", "status": "success"}


def test_loggers_by_name_land_under_default_root_dir(tmp_path: Path) -> None:
    trainer, _ = fit(
        ["tensorboard", "csv"], enable_progress_bar=False, default_root_dir=tmp_path / "runs"
    )
    expected = tmp_path / "runs" / "loopkit_logs" / "version_0"
    assert [lg.log_dir for lg in trainer.loggers] == [expected, expected]
    assert trainer.log_dir == str(expected)
    assert (expected / "metrics.csv").exists() and list(expected.glob("events.out.tfevents.*"))
    # logger=True is TensorBoard, as in Lightning; a second run takes the next version.
    trainer, _ = fit(True, enable_progress_bar=False, default_root_dir=tmp_path / "runs")
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert trainer.logger.log_dir == tmp_path / "runs" / "loopkit_logs" / "version_1"


def test_a_run_that_raises_midway_leaves_its_metrics_on_disk(tmp_path: Path) -> None:
    # The training process dies of the exception at batch 6 (epoch 1), with loggers that flush
    # only every 100 calls: what is on disk is what the exception path wrote.
    script = TRAINING + textwrap.dedent(
        """
        from loopkit_logging import CSVLogger, TensorBoardLogger
        fit([TensorBoardLogger(root_dir="logs"), CSVLogger(root_dir="logs")], fail_at=6)
        """
    )
    proc = run_script(script, tmp_path)
    assert proc.returncode != 0 and "boom at batch 6" in proc.stderr
    log_dir = tmp_path / "logs" / "loopkit_logs" / "version_0"
    # The same seeded run without the failure gives the losses of the first 6 batches.
    _, reference = fit(CSVLogger(root_dir=tmp_path / "ref"), enable_progress_bar=False)
    expected = reference.losses[:6]
    assert scalars(log_dir, "train_loss") == [(i, f32(v)) for i, v in enumerate(expected)]
    assert [s for s, _ in scalars(log_dir, "val_loss")] == [3]  # epoch 0's validation ran
    _, rows = read_csv(log_dir / "metrics.csv")
    logged = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert logged == pytest.approx(expected, rel=1e-6)
    assert json.loads((log_dir / "hparams.json").read_text())["fail_at"] == 6


def test_progress_bar_is_attached_by_the_trainer() -> None:
    trainer = loopkit.Trainer(accelerator="cpu", max_epochs=1, logger=False)
    assert trainer.fabric.get_plugin("progress_bar") is not None
    trainer = loopkit.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False
    )
    assert trainer.fabric.get_plugin("progress_bar") is None
