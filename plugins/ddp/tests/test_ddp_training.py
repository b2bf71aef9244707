"""DDP on 2 CPU processes (gloo): started by torchrun, by itself, and by spawn.

Each run must end with the weights one process gets training on the concatenated batches of
both ranks: DDP averages the two ranks' gradients, which is the gradient of the mean loss over
the 8 samples of a step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check_ok, load_script, python_script, torchrun
from torch import nn

from loopkit import Fabric

pytestmark = pytest.mark.distributed

script = load_script("train_ddp")
WORLD = 2


def reference(epochs: int = 2, accumulate: int = 1) -> dict[str, torch.Tensor]:
    """One process, global batches of 8 consecutive samples (what 2 ranks x 4 add up to)."""
    x, y = script.data().tensors  # type: ignore[attr-defined]
    net = script.model()  # type: ignore[attr-defined]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    per_step = script.BATCH * WORLD * accumulate  # type: ignore[attr-defined]
    for _ in range(epochs):
        for start in range(0, len(x), per_step):
            batch = slice(start, start + per_step)
            loss = nn.functional.mse_loss(net(x[batch]), y[batch])
            loss.backward()
            opt.step()
            opt.zero_grad()
    return net.state_dict()


def results(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_matches_reference(out: Path, **kw: int) -> list[dict]:
    ranks = results(out)
    expected = reference(**kw)
    for r in ranks:
        assert r["world_size"] == WORLD
        assert r["forward_module"] == "DistributedDataParallel"
        for key, value in expected.items():
            torch.testing.assert_close(r["weights"][key], value, rtol=0, atol=1e-6)
    # the replicas agree exactly with each other
    for key in expected:
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key])
    return ranks


def test_reference_is_not_what_one_rank_alone_would_learn(tmp_path: Path) -> None:
    # Guard against a vacuous comparison: the script on one device (in this process, batches
    # of 4) learns different weights than the 2-rank reference.
    args = script.main.__globals__["argparse"].Namespace(  # type: ignore[attr-defined]
        out=str(tmp_path), epochs=2, accumulate=1, accumulation_plugin=False,
        count_allreduce=False, fail_step=None, fail_rank=1,
    )  # fmt: skip
    alone = script.train(Fabric(accelerator="cpu", devices=1), args)  # type: ignore[attr-defined]
    assert alone["strategy"] == "SingleDeviceStrategy"
    expected = reference()
    assert not torch.allclose(alone["weights"]["0.weight"], expected["0.weight"], atol=1e-4)


def test_ddp_under_torchrun_matches_one_process_on_the_concatenated_batches(tmp_path: Path) -> None:
    check_ok(torchrun("train_ddp", "--out", str(tmp_path), "--strategy", "ddp", "--devices", "2",
                      "--count-allreduce"))  # fmt: skip
    ranks = assert_matches_reference(tmp_path)
    assert sorted(r["local_rank"] for r in ranks) == [0, 1]
    for r in ranks:
        # Counted by a hook registered on fabric_module.forward_module (the DDP object): one
        # gradient all-reduce per step (one bucket: the model is small).
        assert r["optimizer_steps"] == 8
        assert r["allreduce_calls"] == 8


def test_ddp_self_launch_matches_one_process(tmp_path: Path) -> None:
    # `python train_ddp.py --devices 2`, and fabric.launch() never called: rank 0 re-runs the
    # script for rank 1 itself at the first fabric.setup(). (The Trainer test covers launch().)
    result = python_script("train_ddp", "--out", str(tmp_path), "--strategy", "ddp",
                           "--devices", "2")  # fmt: skip
    check_ok(result)
    ranks = assert_matches_reference(tmp_path)
    assert ranks[0]["pid"] != ranks[1]["pid"]


def test_ddp_spawn_matches_one_process_and_returns_rank_zero_result(tmp_path: Path) -> None:
    result = python_script(
        "train_ddp", "--out", str(tmp_path), "--strategy", "ddp_spawn", "--devices", "2",
        "--how", "spawn",
    )  # fmt: skip
    check_ok(result)
    assert_matches_reference(tmp_path)
    returned = torch.load(tmp_path / "returned.pt", weights_only=False)
    assert returned["rank"] == 0  # fabric.launch(fn) hands back rank zero's return value
    assert torch.equal(returned["weights"]["2.bias"], results(tmp_path)[0]["weights"]["2.bias"])
