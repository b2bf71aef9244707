"""loopkit.Trainer under DDP, and an example from examples/ started by `loopkit run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check_ok, load_script, loopkit_run, python_script
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


@pytest.mark.parametrize(("module", "accumulate"), [("manual", 1), ("accumulate", 2)])
def test_manual_optimization_under_ddp_matches_one_process(
    tmp_path: Path, module: str, accumulate: int
) -> None:
    # training_step runs as DDP's forward and calls backward inside it: the gradients must be
    # averaged all the same, and stay local under no_backward_sync until the window's last.
    check_ok(python_script("train_trainer", str(tmp_path), "--strategy", "ddp", "--devices", "2",
                           "--module", module))  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        assert r["global_step"] == 8 // accumulate
        for key, value in reference(accumulate=accumulate).items():
            torch.testing.assert_close(r["weights"][key], value, rtol=0, atol=1e-6)


def two_step_reference() -> dict[str, torch.Tensor]:
    """TwoStepRegressor's steps in one process, on global batches of 8 (2 ranks x 4)."""
    script = load_script("train_trainer")
    x, y = script.data().tensors  # type: ignore[attr-defined]
    net = script.Regressor().net  # type: ignore[attr-defined]
    first = torch.optim.SGD(net[0].parameters(), lr=0.1)
    last = torch.optim.SGD(net[2].parameters(), lr=0.1)
    for _ in range(2):
        for start in range(0, len(x), 8):
            xb, yb = x[start : start + 8], y[start : start + 8]
            hidden = net[1](net[0](xb))
            first.zero_grad()
            hidden.pow(2).mean().backward()
            first.step()
            last.zero_grad()
            torch.nn.functional.mse_loss(net[2](hidden.detach()), yb).backward()
            last.step()
    return net.state_dict()


def test_two_backwards_in_one_manual_step_under_ddp(tmp_path: Path) -> None:
    # Each backward leaves the other optimizer's parameters unused: the strategy name
    # Lightning uses for that case turns on DDP's unused-parameter detection.
    check_ok(python_script(
        "train_trainer", str(tmp_path), "--strategy", "ddp_find_unused_parameters_true",
        "--devices", "2", "--module", "two-step",
    ))  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        for key, value in two_step_reference().items():
            torch.testing.assert_close(r["weights"][key], value, rtol=0, atol=1e-6)


def test_trainer_fit_under_ddp_spawn_leaves_the_trained_module_here(tmp_path: Path) -> None:
    # Lightning's behaviour: after fit with ddp_spawn, the calling process's module holds the
    # weights its rank zero trained, and the trainer its counters, metrics and checkpoint paths.
    result = python_script(
        "train_trainer", str(tmp_path), "--strategy", "ddp_spawn", "--devices", "2",
        "--checkpoint", "--validate",
    )  # fmt: skip
    check_ok(result)
    assert not (tmp_path / "rank1.pt").exists()  # only this process wrote: the spawned ranks
    here = torch.load(tmp_path / "rank0.pt", weights_only=False)  # only ran trainer methods
    for key, value in reference().items():
        torch.testing.assert_close(here["weights"][key], value, rtol=0, atol=1e-6)
    assert here["global_step"] == 8 and here["current_epoch"] == 2
    assert set(here["callback_metrics"]) == {"train_loss"}
    best = Path(here["best_model_path"])
    assert best.parent.parent == tmp_path.resolve() and best.is_file()
    saved = torch.load(best, weights_only=True)
    assert saved["global_step"] == 8
    # validate() starts the processes again: rank zero validates its half of the samples
    # (0, 2, 4, ...) with the weights fit ended with, and its metrics come back.
    x, y = load_script("train_trainer").data().tensors  # type: ignore[attr-defined]
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net.load_state_dict(here["weights"])
    with torch.no_grad():
        losses = [
            torch.nn.functional.mse_loss(net(x[i]), y[i]).item()
            for i in torch.arange(0, len(x), 2).split(4)
        ]
    [validated] = here["validated"]
    assert set(validated) == {"val_loss"}
    assert abs(validated["val_loss"] - sum(losses) / len(losses)) < 1e-6


def test_loopkit_run_trains_the_demo_unchanged(tmp_path: Path) -> None:
    demo = EXAMPLES / "demo.py"
    if not demo.is_file():
        pytest.skip("examples/demo.py is not in this checkout")
    result = loopkit_run("--devices", "2", str(demo), "--epochs", "1", "--root-dir", str(tmp_path))
    check_ok(result)
    # 4096 samples in batches of 64 is 64 steps on one device; with LOOPKIT_DEVICES=2 from
    # `loopkit run`, the Trainer picks ddp and each of the 2 ranks takes half of the data.
    assert result.stdout.count("trained 32 steps") == 2, result.stdout
