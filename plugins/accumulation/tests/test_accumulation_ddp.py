"""Under DDP (2 processes, gloo, CPU): one gradient all-reduce per optimizer step.

The all-reduces are counted with a DDP communication hook registered on the Trainer's
DistributedDataParallel module (tests/scripts/trainer_ddp_accumulation.py).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("loopkit_ddp")
pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "trainer_ddp_accumulation.py"


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_trainer_ddp_accumulation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(out: Path, accumulate: int) -> None:
    launcher_keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_keys}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(SCRIPT), str(out), str(accumulate)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 180 s\n{stdout}\n{stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}\n{stderr}"


def reference(accumulate: int) -> dict[str, torch.Tensor]:
    """One process doing what DDP does: the mean over ranks of each rank's scaled gradient."""
    script = load_script()
    net = script.make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = script.dataset()
    shards = [data[r::2] for r in range(2)]  # DistributedSampler without shuffling
    n = len(shards[0][0]) // script.BATCH
    for i in range(n):
        window = min(accumulate, n - (i - i % accumulate))
        losses = []
        for x, y in shards:
            rows = slice(i * script.BATCH, (i + 1) * script.BATCH)
            losses.append(nn.functional.mse_loss(net(x[rows]), y[rows]) / window)
        (sum(losses) / 2).backward()
        if (i + 1) % accumulate == 0 or i == n - 1:
            opt.step()
            opt.zero_grad()
    return net.state_dict()


@pytest.mark.parametrize(("accumulate", "steps"), [(1, 10), (4, 3)])
def test_trainer_all_reduces_once_per_optimizer_step(
    tmp_path: Path, accumulate: int, steps: int
) -> None:
    torchrun(tmp_path, accumulate)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["batches"] == 10
        assert r["global_step"] == steps
        # Windows of 4, 4 and 2 batches (or 10 windows of 1): one all-reduce each.
        assert r["per_step"] == [1] * steps
        assert r["total"] == steps
    expected = reference(accumulate)
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
