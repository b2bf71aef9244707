"""Rank 1 raises at step 5: every rank ends, the exit status is non-zero, and the first error,
with its rank, is what the user reads last."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SCRIPTS, Finished, loopkit_run, python_script

pytestmark = pytest.mark.distributed

FAIL = ["--fail-rank", "1", "--fail-step", "5"]
#: The process-group timeout, the bound of last resort (the launchers end the ranks sooner).
ENV = {"LOOPKIT_PG_TIMEOUT": "30"}


def assert_rank_1_reported(result: Finished, marker: str, out: Path) -> None:
    assert result.returncode != 0, result.stderr
    # Bounded: from rank 1's exception to the last process gone (start-up is not counted).
    failed_at = float((out / "failed_at").read_text())
    assert result.ended_at - failed_at < 60
    assert "ValueError: boom at step 5 on rank 1" in result.stderr
    # The summary names rank 1 and its error, and comes after everything else the ranks wrote.
    summary = result.stderr[result.stderr.rindex(marker) :]
    assert "rank 1" in summary.splitlines()[0]
    assert "boom at step 5 on rank 1" in summary


def test_self_launched_ddp_rank_failure_ends_every_rank(tmp_path: Path) -> None:
    result = python_script("train_ddp", "--out", str(tmp_path), "--strategy", "ddp",
                           "--devices", "2", *FAIL, env=ENV)  # fmt: skip
    assert_rank_1_reported(result, "failed first", tmp_path)
    assert not list(tmp_path.glob("rank*.pt"))  # nobody finished


def test_loopkit_run_rank_failure_ends_every_rank(tmp_path: Path) -> None:
    result = loopkit_run("--devices", "2", str(SCRIPTS / "train_ddp.py"), "--out", str(tmp_path),
                         *FAIL, env=ENV)  # fmt: skip
    assert_rank_1_reported(result, "failed first", tmp_path)
    assert result.returncode == 1
    assert not list(tmp_path.glob("rank*.pt"))


def test_ddp_spawn_rank_failure_ends_every_rank(tmp_path: Path) -> None:
    result = python_script("train_ddp", "--out", str(tmp_path), "--strategy", "ddp_spawn",
                           "--devices", "2", "--how", "spawn", *FAIL, env=ENV)  # fmt: skip
    assert_rank_1_reported(result, "failed first", tmp_path)
    assert not list(tmp_path.glob("*.pt"))
