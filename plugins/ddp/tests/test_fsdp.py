"""FSDP2 on 2 CPU processes (gloo): sharded parameters, training, sharded checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check_ok, load_script, torchrun
from torch import nn

pytestmark = pytest.mark.distributed

script = load_script("train_fsdp")


def reference() -> dict[str, torch.Tensor]:
    """One process, unsharded: Adam on global batches of 8 (2 ranks x 4)."""
    x, y = script.data().tensors  # type: ignore[attr-defined]
    net = script.model()  # type: ignore[attr-defined]
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(script.STEPS):  # type: ignore[attr-defined]
        # DistributedSampler without shuffling: step k's two batches are samples 8k..8k+7.
        sl = slice(8 * step, 8 * step + 8)
        nn.functional.mse_loss(net(x[sl]), y[sl]).backward()
        opt.step()
        opt.zero_grad()
    return net.state_dict()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("fsdp")
    check_ok(torchrun("train_fsdp", str(out)))
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_fsdp_shards_every_parameter_across_the_ranks(fsdp_run: tuple[Path, list[dict]]) -> None:
    _, ranks = fsdp_run
    for r in ranks:
        assert set(r["kinds"].values()) == {"DTensor"}
        # Linear(4, 8): each rank holds half of the 8 rows; Linear(8, 1): one rank holds the row.
        assert r["local_shapes"]["0.weight"] == (4, 4)
    assert {r["local_shapes"]["2.weight"] for r in ranks} == {(1, 8), (0, 8)}


def test_fsdp_training_matches_the_unsharded_reference(fsdp_run: tuple[Path, list[dict]]) -> None:
    _, ranks = fsdp_run
    expected = reference()
    for r in ranks:
        for key, value in expected.items():
            torch.testing.assert_close(r["trained"][key], value, rtol=1e-5, atol=1e-6)
        assert not torch.equal(r["trained"]["0.weight"], script.model().state_dict()["0.weight"])  # type: ignore[attr-defined]


def test_fsdp_sharded_checkpoint_saves_and_restores(fsdp_run: tuple[Path, list[dict]]) -> None:
    out, ranks = fsdp_run
    # A directory of per-rank shards written by torch.distributed.checkpoint.
    assert ranks[0]["ckpt_files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list(out.glob(".ckpt.*"))  # no temporary directory left
    for r in ranks:
        assert r["restored_step"] == 2
        assert r["extra"] == {"note": "fsdp"}  # entries not asked for come back to the caller
        # A fresh model (other initial weights) resumed from step 2 ends exactly where the
        # uninterrupted run did: weights and Adam state were both restored.
        for key in r["trained"]:
            assert torch.equal(r["resumed"][key], r["trained"][key])
        assert not torch.equal(r["restored_at_save"]["0.weight"], r["trained"]["0.weight"])


def test_fsdp_no_backward_sync_turns_gradient_sync_off_and_restores_it(
    fsdp_run: tuple[Path, list[dict]],
) -> None:
    _, ranks = fsdp_run
    for r in ranks:
        inside, nested_disabled, after = r["sync_flags"]
        assert inside and not any(inside)  # every sharded unit stops reducing
        assert nested_disabled == inside  # enabled=False changes nothing
        assert after and all(after)  # the previous setting is back
