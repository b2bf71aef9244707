"""A run that raises midway leaves every metric logged before the exception on disk."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import f32, read_csv, run_script, scalars

# The process dies of the exception (no finalize, nothing at interpreter exit): the loggers
# flush only every 100 calls, so what reaches the disk is what the exception path flushed.
SCRIPT = textwrap.dedent(
    """
    import json, loopkit
    from loopkit_logging import CSVLogger, TensorBoardLogger
    STYLE = "STYLE"
    loggers = [TensorBoardLogger(root_dir="logs"), CSVLogger(root_dir="logs")]
    fabric = loopkit.Fabric(accelerator="cpu", loggers=loggers)
    logged = []

    def train():
        for step in range(10):
            if step == 6:
                json.dump(logged, open("logged.json", "w"))
                raise RuntimeError("boom at step 6")
            value = 1.0 / (step + 1)
            metrics = {"loss": value, **({"late": step * 2.0} if step >= 3 else {})}
            fabric.log_dict(metrics, step=step)
            logged.append(value)

    if STYLE == "hook":
        try:
            train()
        except BaseException as err:
            fabric.call("on_exception", exception=err)
            raise
    else:
        with loggers[0], loggers[1]:
            train()
    """
)


@pytest.mark.parametrize("style", ["hook", "context"])
def test_metrics_before_the_exception_are_readable(style: str, tmp_path: Path) -> None:
    proc = run_script(SCRIPT.replace("STYLE", style), tmp_path)
    assert proc.returncode != 0 and "boom at step 6" in proc.stderr
    logged = json.loads((tmp_path / "logged.json").read_text())
    assert len(logged) == 6
    log_dir = tmp_path / "logs" / "loopkit_logs" / "version_0"
    assert scalars(log_dir, "loss") == [(i, f32(v)) for i, v in enumerate(logged)]
    assert [s for s, _ in scalars(log_dir, "late")] == [3, 4, 5]
    header, rows = read_csv(log_dir / "metrics.csv")
    assert header == ["step", "loss", "late"]
    assert [float(r["loss"]) for r in rows] == logged
    assert [r["late"] for r in rows] == ["", "", "", "6.0", "8.0", "10.0"]
