"""DistributedSampler swapping, and gradient all-reduces counted with a DDP communication hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check_ok, load_script, torchrun
from test_ddp_training import assert_matches_reference

pytestmark = pytest.mark.distributed

sampler_script = load_script("sampler_ddp")


def test_distributed_sampler_gives_disjoint_shards_and_a_new_permutation_each_epoch(
    tmp_path: Path,
) -> None:
    check_ok(torchrun("sampler_ddp", str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    n, epochs, seed = (sampler_script.NUM_SAMPLES, sampler_script.EPOCHS,  # type: ignore[attr-defined]
                       sampler_script.SEED)  # type: ignore[attr-defined]  # fmt: skip
    assert {r["sampler"] for r in ranks} == {"DistributedSampler"}
    orders = []
    for epoch in range(epochs):
        a, b = ranks[0]["shuffled"][epoch], ranks[1]["shuffled"][epoch]
        assert len(a) == len(b) == n // 2
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(n))
        # Seeded by seed_everything, reshuffled by epoch: the permutation DistributedSampler
        # draws for (seed, epoch), interleaved over the ranks.
        g = torch.Generator().manual_seed(seed + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        assert a == perm[0::2] and b == perm[1::2]
        orders.append(a + b)
    assert orders[0] != orders[1] != orders[2]
    # A loader without shuffling keeps its order; each rank takes every other sample.
    for epoch in range(epochs):
        assert ranks[0]["ordered"][epoch] == list(range(0, n, 2))
        assert ranks[1]["ordered"][epoch] == list(range(1, n, 2))


def test_accumulating_4_batches_with_no_backward_sync_all_reduces_once_per_step(
    tmp_path: Path,
) -> None:
    check_ok(torchrun("train_ddp", "--out", str(tmp_path), "--strategy", "ddp", "--devices", "2",
                      "--count-allreduce", "--accumulate", "4"))  # fmt: skip
    for r in assert_matches_reference(tmp_path, accumulate=4):
        assert r["optimizer_steps"] == 2
        assert r["allreduce_calls"] == 2


def test_accumulation_plugin_under_ddp_all_reduces_once_per_step(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_accumulation")
    check_ok(torchrun("train_ddp", "--out", str(tmp_path), "--strategy", "ddp", "--devices", "2",
                      "--count-allreduce", "--accumulate", "4",
                      "--accumulation-plugin"))  # fmt: skip
    for r in assert_matches_reference(tmp_path, accumulate=4):
        assert r["optimizer_steps"] == 2
        assert r["allreduce_calls"] == 2
