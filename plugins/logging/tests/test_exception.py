"""An exception in a Fabric loop: every metric logged before it is on disk when it propagates.

The files are read as soon as the exception has left the loop (nothing else finalizes the
loggers, and they stay referenced), with loggers that flush only every 100 calls. The Trainer's
version, in a process that dies of the exception, is in test_trainer.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import f32, read_csv, scalars

import loopkit
from loopkit_logging import CSVLogger, TensorBoardLogger


def _train(fabric: loopkit.Fabric, logged: list[float]) -> None:
    for step in range(10):
        if step == 6:
            raise RuntimeError("boom at step 6")
        value = 1.0 / (step + 1)
        fabric.log_dict({"loss": value, **({"late": step * 2.0} if step >= 3 else {})}, step=step)
        logged.append(value)


def _check(log_dir: Path, logged: list[float]) -> None:
    assert len(logged) == 6
    assert scalars(log_dir, "loss") == [(i, f32(v)) for i, v in enumerate(logged)]
    assert [s for s, _ in scalars(log_dir, "late")] == [3, 4, 5]
    header, rows = read_csv(log_dir / "metrics.csv")
    assert header == ["step", "loss", "late"]
    assert [float(r["loss"]) for r in rows] == logged
    assert [r["late"] for r in rows] == ["", "", "", "6.0", "8.0", "10.0"]


@pytest.mark.parametrize("style", ["on_exception hook", "context manager"])
def test_metrics_before_the_exception_are_readable(style: str, tmp_path: Path) -> None:
    loggers = [TensorBoardLogger(root_dir=tmp_path), CSVLogger(root_dir=tmp_path)]
    fabric = loopkit.Fabric(accelerator="cpu", loggers=loggers)
    logged: list[float] = []
    with pytest.raises(RuntimeError, match="boom at step 6"):
        if style == "on_exception hook":
            try:
                _train(fabric, logged)
            except BaseException as err:
                fabric.call("on_exception", exception=err)
                raise
        else:
            with loggers[0], loggers[1]:
                _train(fabric, logged)
    _check(loggers[0].log_dir, logged)


def test_without_the_exception_path_rows_wait_in_memory(tmp_path: Path) -> None:
    # The control: the same run with nothing told of the exception has no metrics.csv yet.
    logger = CSVLogger(root_dir=tmp_path)
    fabric = loopkit.Fabric(accelerator="cpu", loggers=logger)
    with pytest.raises(RuntimeError):
        _train(fabric, [])
    assert not (logger.log_dir / "metrics.csv").exists()
