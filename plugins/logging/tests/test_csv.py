"""CSVLogger: metrics.csv grows columns without losing rows; hparams.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fabric_run, read_csv

from loopkit_logging import CSVLogger


def test_columns_appear_midway_and_every_row_is_kept(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path, flush_logs_every_n_steps=2)
    losses = fabric_run(logger, steps=8)
    header, rows = read_csv(logger.log_dir / "metrics.csv")
    assert header == ["step", "loss", "grad"]
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert [float(r["loss"]) for r in rows] == losses  # full float precision
    assert [r["grad"] for r in rows[:4]] == ["", "", "", ""]
    assert all(float(r["grad"]) > 0 for r in rows[4:])


def test_a_new_column_after_a_flush_rewrites_the_header(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"train_loss": 0.5}, step=0)
    logger.log_metrics({"train_loss": 0.4}, step=1)
    logger.log_metrics({"val_loss": 0.7, "val_acc": torch.tensor(0.25)}, step=1)
    header, rows = read_csv(logger.log_dir / "metrics.csv")
    assert header == ["step", "train_loss", "val_loss", "val_acc"]
    assert rows == [
        {"step": "0", "train_loss": "0.5", "val_loss": "", "val_acc": ""},
        {"step": "1", "train_loss": "0.4", "val_loss": "", "val_acc": ""},
        {"step": "1", "train_loss": "", "val_loss": "0.7", "val_acc": "0.25"},
    ]
    assert not [p.name for p in logger.log_dir.iterdir() if p.name.endswith(".tmp")]


def test_naming_an_existing_version_appends_to_it(tmp_path: Path) -> None:
    first = CSVLogger(root_dir=tmp_path, version=0)
    first.log_metrics({"a": 1.0, "b": 2.0}, step=0)
    first.finalize()
    again = CSVLogger(root_dir=tmp_path, version=0)
    again.log_metrics({"c": 3.0, "a": 4.0}, step=1)
    again.finalize()
    header, rows = read_csv(tmp_path / "loopkit_logs" / "version_0" / "metrics.csv")
    assert header == ["step", "a", "b", "c"]
    assert rows == [
        {"step": "0", "a": "1.0", "b": "2.0", "c": ""},
        {"step": "1", "a": "4.0", "b": "", "c": "3.0"},
    ]


def test_hparams_json(tmp_path: Path) -> None:
    import argparse

    logger = CSVLogger(root_dir=tmp_path)
    logger.log_hyperparams(argparse.Namespace(lr=0.01, batch_size=32))
    logger.log_hyperparams({"model": {"width": 64, "act": "relu"}})
    saved = json.loads((logger.log_dir / "hparams.json").read_text())
    assert saved == {"lr": 0.01, "batch_size": 32, "model/width": 64, "model/act": "relu"}


def test_rows_reach_the_disk_every_n_calls(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path, flush_logs_every_n_steps=3)
    for step in range(4):
        logger.log_metrics({"loss": float(step)}, step=step)
    _, rows = read_csv(logger.log_dir / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2"]  # the 4th waits for the next flush
    logger.save()
    _, rows = read_csv(logger.log_dir / "metrics.csv")
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]


def test_bad_input(tmp_path: Path) -> None:
    logger = CSVLogger(root_dir=tmp_path)
    with pytest.raises(ValueError, match="'step' is taken"):
        logger.log_metrics({"step": 1.0})
    with pytest.raises(TypeError, match="metric 'name' has value 'abc'"):
        logger.log_metrics({"name": "abc"})
    with pytest.raises(TypeError, match="log_hyperparams\\(\\) takes a mapping"):
        logger.log_hyperparams([("lr", 0.1)])
    with pytest.raises(ValueError, match="version=-1"):
        CSVLogger(version=-1)
    with pytest.raises(TypeError, match=r"version=1\.5"):
        CSVLogger(version=1.5)  # type: ignore[arg-type]


def test_only_rank_zero_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "3")
    logger = CSVLogger(root_dir=tmp_path, flush_logs_every_n_steps=1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize()
    assert not (tmp_path / "loopkit_logs").exists()
