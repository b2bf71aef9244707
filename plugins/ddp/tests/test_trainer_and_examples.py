"""loopkit.Trainer under DDP, and an example from examples/ started by `loopkit run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check_ok, loopkit_run, python_script
from test_ddp_training import reference

pytestmark = pytest.mark.distributed

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_trainer_fit_under_ddp_matches_one_process(tmp_path: Path) -> None:
    check_ok(python_script("train_trainer", str(tmp_path), "--strategy", "ddp", "--devices", "2"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    expected = reference()
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world_size"] == 2
        assert r["global_step"] == 8  # 2 epochs x 32 samples / (2 ranks x 4)
        for key, value in expected.items():
            torch.testing.assert_close(r["weights"][key], value, rtol=0, atol=1e-6)


def test_loopkit_run_trains_the_demo_unchanged(tmp_path: Path) -> None:
    demo = EXAMPLES / "demo.py"
    if not demo.is_file():
        pytest.skip("examples/demo.py is not in this checkout")
    result = loopkit_run("--devices", "2", str(demo), "--epochs", "1", "--root-dir", str(tmp_path))
    check_ok(result)
    # 4096 samples in batches of 64 is 64 steps on one device; with LOOPKIT_DEVICES=2 from
    # `loopkit run`, the Trainer picks ddp and each of the 2 ranks takes half of the data.
    assert result.stdout.count("trained 32 steps") == 2, result.stdout
