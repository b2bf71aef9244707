"""DDP on 2 CPU processes (gloo): started by torchrun, by itself, and by spawn.

Each run must end with the weights one process gets training on the concatenated batches of
both ranks: DDP averages the two ranks' gradients, which is the gradient of the mean loss over
the 8 samples of a step. The torchrun run also counts gradient all-reduces with a communication
hook, accumulates gradients both ways, and records what the DistributedSampler gave each rank.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import check_ok, load_script, python_script, torchrun
from torch import nn

from loopkit import Fabric

pytestmark = pytest.mark.distributed

script = load_script("train_ddp")
WORLD = 2
HAVE_ACCUMULATION = importlib.util.find_spec("loopkit_accumulation") is not None


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


def assert_matches_reference(ranks: list[dict], variant: str = "plain", **kw: int) -> None:
    expected = reference(**kw)
    for r in ranks:
        assert r["world_size"] == WORLD
        assert r[variant]["forward_module"] == "DistributedDataParallel"
        for key, value in expected.items():
            torch.testing.assert_close(r[variant]["weights"][key], value, rtol=0, atol=1e-6)
    for key in expected:  # the replicas agree exactly with each other
        assert torch.equal(ranks[0][variant]["weights"][key], ranks[1][variant]["weights"][key])


def test_reference_is_not_what_one_rank_alone_would_learn(tmp_path: Path) -> None:
    # Guard against a vacuous comparison: the script on one device (in this process, batches
    # of 4) learns different weights than the 2-rank reference.
    args = argparse.Namespace(out=str(tmp_path), count_allreduce=False, fail_step=None, fail_rank=1)
    fabric = Fabric(accelerator="cpu", devices=1)
    alone = script.train_variant(fabric, "plain", args)  # type: ignore[attr-defined]
    assert type(fabric.strategy).__name__ == "SingleDeviceStrategy"
    expected = reference()
    assert not torch.allclose(alone["weights"]["0.weight"], expected["0.weight"], atol=1e-4)


@pytest.fixture(scope="module")
def torchrun_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("torchrun")
    variants = "plain,accumulate" + (",plugin" if HAVE_ACCUMULATION else "")
    check_ok(torchrun("train_ddp", "--out", str(out), "--strategy", "ddp", "--devices", "2",
                      "--variants", variants, "--count-allreduce", "--samples"))  # fmt: skip
    return results(out)


def test_ddp_under_torchrun_matches_one_process_on_the_concatenated_batches(
    torchrun_ranks: list[dict],
) -> None:
    assert_matches_reference(torchrun_ranks)
    assert sorted(r["local_rank"] for r in torchrun_ranks) == [0, 1]
    for r in torchrun_ranks:
        # Counted by a hook registered on fabric_module.forward_module (the DDP object): one
        # gradient all-reduce per step (one bucket: the model is small).
        assert r["plain"]["optimizer_steps"] == 8
        assert r["plain"]["allreduce_calls"] == 8


def test_accumulating_4_batches_with_no_backward_sync_all_reduces_once_per_step(
    torchrun_ranks: list[dict],
) -> None:
    assert_matches_reference(torchrun_ranks, "accumulate", accumulate=4)
    for r in torchrun_ranks:
        assert r["accumulate"]["optimizer_steps"] == 2
        assert r["accumulate"]["allreduce_calls"] == 2


@pytest.mark.skipif(not HAVE_ACCUMULATION, reason="loopkit-accumulation is not installed")
def test_accumulation_plugin_under_ddp_all_reduces_once_per_step(
    torchrun_ranks: list[dict],
) -> None:
    assert_matches_reference(torchrun_ranks, "plugin", accumulate=4)
    for r in torchrun_ranks:
        assert r["plugin"]["optimizer_steps"] == 2
        assert r["plugin"]["allreduce_calls"] == 2


def test_distributed_sampler_gives_disjoint_shards_and_a_new_permutation_each_epoch(
    torchrun_ranks: list[dict],
) -> None:
    a_epochs, b_epochs = torchrun_ranks[0]["samples"], torchrun_ranks[1]["samples"]
    n = 20
    orders = []
    for epoch, (a, b) in enumerate(zip(a_epochs, b_epochs)):
        assert len(a) == len(b) == n // 2
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(n))
        # Seeded by seed_everything(7), reshuffled by epoch: the permutation DistributedSampler
        # draws for (seed, epoch), interleaved over the ranks.
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert a == perm[0::2] and b == perm[1::2]
        orders.append(a + b)
    assert orders[0] != orders[1] != orders[2]


def test_ddp_self_launch_matches_one_process(tmp_path: Path) -> None:
    # `python train_ddp.py --devices 2`, and fabric.launch() never called: rank 0 re-runs the
    # script for rank 1 itself at the first fabric.setup(). (The Trainer test covers launch().)
    result = python_script("train_ddp", "--out", str(tmp_path), "--strategy", "ddp",
                           "--devices", "2")  # fmt: skip
    check_ok(result)
    ranks = results(tmp_path)
    assert_matches_reference(ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]


def test_ddp_spawn_with_the_model_passed_through_launch(tmp_path: Path) -> None:
    # torch sends the caller's model to each rank in shared memory: without copies of their
    # own, the ranks would each apply the other's updates to one set of parameters.
    result = python_script(
        "train_ddp", "--out", str(tmp_path), "--strategy", "ddp_spawn", "--devices", "2",
        "--how", "spawn", "--model-from-caller",
    )  # fmt: skip
    check_ok(result)
    assert_matches_reference(results(tmp_path))


def test_ddp_spawn_matches_one_process_and_returns_rank_zero_result(tmp_path: Path) -> None:
    result = python_script(
        "train_ddp", "--out", str(tmp_path), "--strategy", "ddp_spawn", "--devices", "2",
        "--how", "spawn",
    )  # fmt: skip
    check_ok(result)
    assert_matches_reference(results(tmp_path))
    returned = torch.load(tmp_path / "returned.pt", weights_only=False)
    assert returned["rank"] == 0  # fabric.launch(fn) hands back rank zero's return value
    assert torch.equal(returned["plain"]["weights"]["2.bias"],
                       results(tmp_path)[0]["plain"]["weights"]["2.bias"])  # fmt: skip
