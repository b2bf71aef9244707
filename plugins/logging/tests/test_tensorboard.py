"""TensorBoardLogger: event files read back with tensorboard's EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import f32, fabric_run, hparams_of, scalars

import loopkit
from loopkit_logging import CSVLogger, TensorBoardLogger


def test_training_run_writes_the_scalar_series(tmp_path: Path) -> None:
    logger = TensorBoardLogger(root_dir=tmp_path)
    losses = fabric_run(logger, steps=8)
    assert logger.log_dir == tmp_path / "loopkit_logs" / "version_0"
    assert scalars(logger.log_dir, "loss") == [(i, f32(v)) for i, v in enumerate(losses)]
    # "grad" appeared at step 4: its series starts there.
    assert [s for s, _ in scalars(logger.log_dir, "grad")] == [4, 5, 6, 7]


def test_hyperparameters_are_readable_by_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(root_dir=tmp_path)
    logger.log_hyperparams(
        {"lr": 0.1, "optimizer": {"name": "sgd", "momentum": 0.9}, "layers": [4, 2], "bn": True,
         "seed": torch.tensor(7)}
    )
    logger.finalize("success")
    assert hparams_of(logger.log_dir) == {
        "lr": 0.1,
        "optimizer/name": "sgd",
        "optimizer/momentum": 0.9,
        "layers": "[4, 2]",
        "bn": True,
        "seed": 7.0,
    }


def test_versions_count_up_without_clobbering(tmp_path: Path) -> None:
    (tmp_path / "runs" / "version_3").mkdir(parents=True)
    (tmp_path / "runs" / "version_3" / "keep.txt").write_text("old run")
    first = TensorBoardLogger(root_dir=tmp_path, name="runs")
    first.log_metrics({"a": 1.0}, step=0)
    second = TensorBoardLogger(root_dir=tmp_path, name="runs")
    second.log_metrics({"a": 2.0}, step=0)
    for lg in (first, second):
        lg.finalize()
    assert (first.version, second.version) == (4, 5)
    assert (tmp_path / "runs" / "version_3" / "keep.txt").read_text() == "old run"
    assert scalars(first.log_dir, "a") == [(0, 1.0)]
    assert scalars(second.log_dir, "a") == [(0, 2.0)]


def test_named_version_and_no_name_folder(tmp_path: Path) -> None:
    named = TensorBoardLogger(root_dir=tmp_path, name="", version="baseline")
    numbered = TensorBoardLogger(root_dir=tmp_path, name=None, version=2)
    assert named.log_dir == tmp_path / "baseline"
    assert numbered.log_dir == tmp_path / "version_2"


def test_flush_interval_puts_data_on_disk_before_the_end(tmp_path: Path) -> None:
    logger = TensorBoardLogger(root_dir=tmp_path, flush_logs_every_n_steps=3)
    for step in range(3):
        logger.log_metrics({"loss": float(step)}, step=step)
    # Not finalized: the third call flushed.
    assert scalars(logger.log_dir, "loss") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    logger.finalize()


def test_loggers_of_one_fabric_share_a_version_folder(tmp_path: Path) -> None:
    (tmp_path / "loopkit_logs" / "version_0").mkdir(parents=True)
    tb, csv_logger = TensorBoardLogger(root_dir=tmp_path), CSVLogger(root_dir=tmp_path)
    fabric_run([tb, csv_logger], steps=2)
    assert tb.log_dir == csv_logger.log_dir == tmp_path / "loopkit_logs" / "version_1"
    assert (tb.log_dir / "metrics.csv").exists()


def test_by_name_with_log_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOPKIT_LOG_DIR", str(tmp_path / "elsewhere"))
    fabric = loopkit.Fabric(accelerator="cpu", loggers="tensorboard")
    assert isinstance(fabric.logger, TensorBoardLogger)
    fabric.log("loss", torch.tensor(0.5), step=3)
    fabric.logger.finalize()
    assert fabric.logger.log_dir == tmp_path / "elsewhere" / "loopkit_logs" / "version_0"
    assert scalars(fabric.logger.log_dir, "loss") == [(3, 0.5)]


def test_default_root_is_the_working_directory(tmp_path: Path) -> None:
    logger = TensorBoardLogger()
    logger.log_metrics({"x": 1.0})  # no step: counted from 0
    logger.log_metrics({"x": 2.0})
    logger.finalize()
    assert logger.log_dir.resolve() == (tmp_path / "loopkit_logs" / "version_0").resolve()
    assert scalars(logger.log_dir, "x") == [(0, 1.0), (1, 2.0)]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    logger = TensorBoardLogger(root_dir=tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.experiment.add_text("note", "ignored on rank 1")
    logger.finalize()
    assert not (tmp_path / "loopkit_logs").exists()


def test_bad_values_name_the_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(root_dir=tmp_path)
    with pytest.raises(TypeError, match="metric 'weights' has value"):
        logger.log_metrics({"weights": torch.ones(3)}, step=0)
    with pytest.raises(TypeError, match="step='3'"):
        logger.log_metrics({"loss": 1.0}, step="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="root_dir=, name= and version="):
        TensorBoardLogger(log_dir="x")
    with pytest.raises(ValueError, match="flush_logs_every_n_steps=0"):
        TensorBoardLogger(flush_logs_every_n_steps=0)
