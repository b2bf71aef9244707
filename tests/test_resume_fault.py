"""SIGKILL a training run at random points; each resumed run ends bitwise identical.

``tests/_resume_job.py`` is the run (shuffled data with augmentation, dropout, python and numpy
randomness, Adam, validation in the middle of epochs, two ModelCheckpoints). Ten kill points are
drawn with a fixed seed among the moments a process can die at: inside a step, between backward
and the optimizer step, after the step but before its checkpoint, half-way through writing a
checkpoint file, before the rename that publishes it, inside validation, at an epoch's end and
before the next epoch. They are split into two chains of five that run side by side (two cores):
each chain starts a run, SIGKILLs it at its first point, resumes it with ``ckpt_path="last"``,
kills the resumed run at the next point, and so on; the last resume runs to the end. Its final
weights, optimizer state and callback state must equal an uninterrupted run's with
``torch.equal``. After every kill the checkpoint folder must hold a ``last.ckpt`` that loads.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest
import torch

from loopkit.checkpoint import safe_load, verify

JOB = Path(__file__).with_name("_resume_job.py")
sys.path.insert(0, str(JOB.parent))

import _resume_job as job

pytestmark = pytest.mark.slow

TOTAL = job.EPOCHS * job.BATCHES_PER_EPOCH
SAVE_KINDS = ("save_topk", "save_last", "rename")
STEP_KINDS = ("step", "before_step", "after_step")


def _kinds(batch: int) -> list[str]:
    """The kill points batch ``batch`` (0-based, over the whole run) passes through."""
    kinds = [*STEP_KINDS, *SAVE_KINDS]
    position = batch % job.BATCHES_PER_EPOCH
    if (position + 1) % job.VAL_EVERY == 0:
        kinds.append("validation")
    if position == job.BATCHES_PER_EPOCH - 1:
        kinds.append("epoch_end")
    if position == 0 and batch > 0:
        kinds.append("epoch_start")
    return kinds


def kill_points(seed: int = 240, count: int = 10) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    batches = sorted(rng.sample(range(TOTAL), count))
    return [(b, rng.choice(_kinds(b))) for b in batches]


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(JOB), str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _chain(root: Path, points: list[tuple[int, str]], out: Path, log: list[str]) -> None:
    for batch, kind in points:
        proc = _run(root, "--kill", f"{batch}:{kind}")
        log.append(f"{batch}:{kind} rc={proc.returncode} {proc.stdout.strip()}")
        assert proc.returncode == -9, f"{batch}:{kind} was not reached:\n{proc.stderr[-3000:]}"
        last = root / "checkpoints" / "last.ckpt"
        if last.exists():  # no checkpoint yet only when killed before the first save
            verify(last)
            assert safe_load(last)["loopkit_version"]
        if kind in ("save_topk", "save_last", "rename"):
            leftovers = list((root / "checkpoints").glob(".*.tmp"))
            assert leftovers, f"{batch}:{kind}: the kill did not land inside a write"
    proc = _run(root, "--out", str(out))
    log.append(f"final rc={proc.returncode} {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]


def _equal(a: t.Any, b: t.Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def test_kill_points_cover_steps_saves_and_epoch_boundaries() -> None:
    points = kill_points()
    kinds = {kind for _, kind in points}
    assert len({b for b, _ in points}) == 10
    assert "step" in kinds and len(kinds & set(STEP_KINDS)) >= 2  # mid-step
    assert len(kinds & set(SAVE_KINDS)) >= 2  # mid-save and before the rename
    assert {"epoch_end", "epoch_start"} <= kinds  # between epochs


def test_killed_and_resumed_runs_end_bitwise_identical(tmp_path: Path) -> None:
    points = kill_points()
    chains = [points[0::2], points[1::2]]  # both span the whole run
    reference = tmp_path / "reference.pt"
    outs = [tmp_path / f"chain{i}.pt" for i in range(2)]
    logs: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def guarded(fn: t.Callable[[], None]) -> t.Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as err:
                errors.append(err)

        return run

    threads = [
        threading.Thread(
            target=guarded(lambda i=i: _chain(tmp_path / f"run{i}", chains[i], outs[i], logs[i]))
        )
        for i in range(2)
    ]
    for th in threads:
        th.start()
    ref = _run(tmp_path / "reference", "--fresh", "--out", str(reference))
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    assert ref.returncode == 0, ref.stderr[-3000:]

    expected = torch.load(reference, weights_only=True)
    assert expected["global_step"] == TOTAL
    for out, log in zip(outs, logs):
        # Every resumed run really resumed: it started after a checkpoint, not from scratch.
        starts = [int(line.split("resumed-at ")[1].split()[0]) for line in log[1:]]
        assert all(s > 0 for s in starts[1:]), log
        got = torch.load(out, weights_only=True)
        for key, value in expected["module"].items():
            assert torch.equal(got["module"][key], value), (key, log)
        assert _equal(got["optimizers"], expected["optimizers"]), log
        assert got["callbacks"] == expected["callbacks"], log  # each batch counted once
        assert (got["global_step"], got["epoch"]) == (expected["global_step"], expected["epoch"])
