"""examples/demo.py, the README's ``./dev demo``: it trains, logs, and says where the logs are.

Each test runs the demo for one epoch in a fresh interpreter, as ``./dev demo`` does (output
piped, so no progress bar is drawn).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOOPKIT_LOG_DIR", "LOOPKIT_LOG_JSON")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )


def test_demo_trains_and_reports_its_logs(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_logging")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    proc = _run(f"import runpy, sys; sys.argv = ['demo.py', '--epochs', '1']; "
                f"runpy.run_path({str(DEMO)!r}, run_name='__main__')", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "on:  tensorboard" in out and "on:  progress_bar" in out
    assert "logs: " + str(tmp_path / "loopkit_logs" / "version_0") in out
    assert "--logdir loopkit_logs" in out
    # The console logger's lines carry step, epoch and the metrics.
    assert "step=63" in out and "epoch=0" in out and "val_acc=" in out
    best = float(out.split("best validation accuracy: ")[1].split("%")[0])
    assert best > 90.0  # one epoch separates the spirals well
    acc = event_accumulator.EventAccumulator(str(tmp_path / "loopkit_logs" / "version_0"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train_loss", "grad_norm", "val_loss", "val_acc", "train_acc"} <= set(tags)
    assert [e.step for e in acc.Scalars("val_acc")] == [63]


def test_demo_without_plugins_says_what_to_install(tmp_path: Path) -> None:
    # Hide every loopkit.plugins entry point but the core's: as if no plugin were installed.
    code = textwrap.dedent(
        f"""
        import importlib.metadata as md, runpy, sys
        all_entry_points = md.entry_points

        def core_only(**kwargs):
            found = all_entry_points(**kwargs)
            if kwargs.get("group") != "loopkit.plugins":
                return found
            return md.EntryPoints(
                ep for ep in found if ep.dist is not None and ep.dist.name == "loopkit"
            )

        md.entry_points = core_only
        sys.argv = ["demo.py", "--epochs", "1"]
        runpy.run_path({str(DEMO)!r}, run_name="__main__")
        """
    )
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "off: tensorboard" in out and "off: bf16-mixed" in out
    assert "pip install -c constraints.txt -e plugins/logging" in out
    assert "pip install -c constraints.txt -e plugins/precision" in out
    assert "no logs written" in out
    assert "best validation accuracy" in out
    assert not (tmp_path / "loopkit_logs").exists()
