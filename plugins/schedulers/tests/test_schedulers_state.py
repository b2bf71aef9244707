"""Scheduler state in checkpoints: a resumed run continues the schedule exactly."""

from __future__ import annotations

import io
import pathlib
import typing as t

import pytest
import torch
from _schedulers_util import Net, batches, fit, lr_of
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

from loopkit import Fabric
from loopkit_schedulers import Schedulers


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Schedulers]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    opt = SGD(model.parameters(), lr=1.0)
    schedulers = Schedulers(
        [
            {"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 3},
            {"scheduler": ReduceLROnPlateau(opt, patience=1, factor=0.5), "monitor": "val"},
        ]
    )
    return model, opt, schedulers


VAL = [4.0, 3.0, 3.0, 3.0, 3.0, 2.0]


def run_epochs(
    fabric: Fabric, model: nn.Module, opt: t.Any, epochs: range
) -> list[float]:
    lrs = []
    for epoch in epochs:
        for batch_idx, (x, y) in enumerate(batches()):
            lrs.append(lr_of(opt))
            opt.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(x), y))
            opt.step()
            fabric.call("on_train_batch_end", batch_idx=batch_idx)
        fabric.call("on_validation_end", metrics={"val": VAL[epoch]})
        fabric.call("on_train_epoch_end")
    return lrs


def test_fabric_save_and_load_resume_the_schedule(tmp_path: pathlib.Path) -> None:
    model, opt, schedulers = make()
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    model, opt = fabric.setup(model, opt)
    uninterrupted = run_epochs(fabric, model, opt, range(len(VAL)))

    model, opt, schedulers = make()
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    model, opt = fabric.setup(model, opt)
    first = run_epochs(fabric, model, opt, range(3))
    path = tmp_path / "run.ckpt"
    fabric.save(path, {"model": model, "optimizer": opt, "schedulers": schedulers})

    model, opt, schedulers = make(seed=1)  # different weights: all of it comes from the file
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    model, opt = fabric.setup(model, opt)
    fabric.load(path, {"model": model, "optimizer": opt, "schedulers": schedulers})
    assert schedulers.epochs == 3 and schedulers.optimizer_steps == [21, 21]
    second = run_epochs(fabric, model, opt, range(3, len(VAL)))

    assert first + second == uninterrupted
    assert len(set(uninterrupted)) >= 5  # both schedulers changed the rate along the way


def test_state_holds_every_scheduler_and_the_counters() -> None:
    model, opt, schedulers = make()
    fabric = Fabric(accelerator="cpu", plugins=[schedulers])
    model, opt = fabric.setup(model, opt)
    run_epochs(fabric, model, opt, range(2))
    state = schedulers.state_dict()
    assert state["names"] == ["lr-SGD", "lr-SGD-1"]
    assert state["optimizer_steps"] == [14, 14] and state["epochs"] == 2
    assert state["schedulers"][0]["last_epoch"] == 4  # 14 steps // 3
    assert state["schedulers"][1]["best"] == 3.0
    assert state["metrics"] == {"val": 3.0}
    # What a checkpoint holds loads back with weights_only=True.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state


def test_loading_into_other_schedulers_is_an_error_naming_both() -> None:
    _, _, schedulers = make()
    torch.manual_seed(0)
    opt = SGD(nn.Linear(3, 1).parameters(), lr=1.0)
    other = Schedulers([StepLR(opt, 1)])
    match = r"2 scheduler\(s\) \(lr-SGD, lr-SGD-1\), but this run has 1"
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(schedulers.state_dict())
    with pytest.raises(KeyError, match="no 'schedulers' entry"):
        other.load_state_dict({"epochs": 1})


def test_trainer_resume_restores_schedulers_loaded_before_they_are_bound() -> None:
    """What a Trainer checkpoint does: the plugin's state goes back in before fit binds it.

    A callback restores the module, the optimizer, the loop counters and the plugin's state at
    ``on_fit_start``, before the plugin has bound the trainer's schedulers: the state is kept and
    applied when they are. The resumed run's rates equal an uninterrupted run's.
    """
    script = {"val_loss": [4.0, 3.0, 3.0, 3.0, 2.0, 2.0]}

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [
            {"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 4},
            ReduceLROnPlateau(opt, patience=1, factor=0.5),
        ]

    whole = Net(configure, val_script=script)
    fit(whole, epochs=6, validate=True)

    first = Net(configure, val_script=script)
    run = fit(first, epochs=3, validate=True)
    saved = {
        "module": {k: v.clone() for k, v in first.state_dict().items()},
        "optimizer": run.optimizers[0].state_dict(),
        "progress": run.progress.state_dict(),
        "schedulers": run.fabric.get_plugin("schedulers").state_dict(),
    }

    class Restore:
        def on_fit_start(self, trainer: t.Any, pl_module: t.Any) -> None:
            pl_module.load_state_dict(saved["module"])
            trainer.optimizers[0].load_state_dict(saved["optimizer"])
            trainer.progress.load_state_dict(saved["progress"])
            plugin = trainer.fabric.get_plugin("schedulers")
            assert plugin.configs == []  # not bound yet: it binds in its own on_fit_start
            plugin.load_state_dict(saved["schedulers"])

    second = Net(configure, val_script=script)
    fit(second, epochs=6, validate=True, callbacks=[Restore()])
    assert first.lrs + second.lrs == whole.lrs
    assert len({row[0] for row in whole.lrs}) >= 5


def test_trainer_checkpoint_file_resumes_the_schedule(tmp_path: pathlib.Path) -> None:
    """End to end through the Trainer's own checkpoints: save_checkpoint, fit(ckpt_path=)."""
    from loopkit import Trainer

    if not hasattr(Trainer, "save_checkpoint"):
        pytest.skip("this loopkit's Trainer does not write checkpoints yet")
    from _schedulers_util import loader, trainer, val_loader

    script = {"val_loss": [4.0, 3.0, 3.0, 3.0, 2.0, 2.0]}

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [
            {"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 4},
            ReduceLROnPlateau(opt, patience=1, factor=0.5),
        ]

    whole = Net(configure, val_script=script)
    fit(whole, epochs=6, validate=True)
    first = Net(configure, val_script=script)
    run = fit(first, epochs=3, validate=True)
    path = tmp_path / "epoch3.ckpt"
    run.save_checkpoint(path)

    second = Net(configure, val_script=script)
    resumed = trainer(max_epochs=6)
    resumed.fit(second, loader(), val_loader(), ckpt_path=path)
    assert first.lrs + second.lrs == whole.lrs
    assert resumed.fabric.get_plugin("schedulers").optimizer_steps == [42, 42]
