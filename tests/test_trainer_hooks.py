"""The order hooks fire in, asserted against the pseudocode in ``loopkit/hooks.py``."""

from __future__ import annotations

import re
import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, trainer

import loopkit
from loopkit.hooks import HOOKS


def documented_order(start: str, end: str) -> list[str]:
    """Hook names (and ``training_step``) in the order the hooks.py docstring lists them,
    from the line naming ``start`` to the line naming ``end``, both included."""
    doc = t.cast(str, loopkit.hooks.__doc__)
    names = [
        w
        for w in re.findall(r"[a-z_]+", doc.split("Which hooks still fire")[0])
        if w in HOOKS or w == "training_step"
    ]
    first = names.index(start)
    last = names.index(end, first)
    return names[first : last + 1]


class Recorder(loopkit.Callback):
    """Records every declared hook (and the module's training_step) in firing order."""

    def __init__(self) -> None:
        self.seen: list[str] = []


def _recording(name: str) -> t.Callable[..., None]:
    def hook(self: Recorder, **kwargs: t.Any) -> None:
        self.seen.append(name)

    return hook


for _name in HOOKS:
    setattr(Recorder, _name, _recording(_name))


def run(model: loopkit.LoopModule, **kwargs: t.Any) -> list[str]:
    rec = Recorder()
    model._recorder = rec  # type: ignore[attr-defined]
    trainer(callbacks=[rec], **kwargs).fit(model, data(n=16, batch_size=8), kwargs.pop("val", None))
    return rec.seen


class Auto(Regressor):
    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        self._recorder.seen.append("training_step")
        return super().training_step(batch, batch_idx)


class Manual(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: t.Any, batch_idx: int) -> None:
        self._recorder.seen.append("training_step")
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.compute_loss(batch))
        opt.step()


def one_batch(seen: list[str]) -> list[str]:
    first = seen.index("on_train_batch_start")
    return seen[first : seen.index("on_train_batch_end", first) + 1]


def test_automatic_batch_follows_the_documented_order() -> None:
    seen = run(Auto(), max_steps=1)
    expected = documented_order("on_train_batch_start", "on_train_batch_end")
    assert expected == [
        "on_train_batch_start", "should_optimizer_step", "training_step",
        "on_before_zero_grad", "on_before_backward", "on_after_backward",
        "on_before_optimizer_step", "on_optimizer_step", "on_train_batch_end",
    ]  # fmt: skip
    assert one_batch(seen) == expected


def test_manual_batch_runs_the_step_hooks_inside_training_step() -> None:
    seen = run(Manual(), max_steps=1)
    # Manual optimization: no query, and the step hooks fire where the user steps.
    expected = [
        h for h in documented_order("on_train_batch_start", "on_train_batch_end")
        if h != "should_optimizer_step"
    ]  # fmt: skip
    assert one_batch(seen) == expected


def test_whole_fit_follows_the_documented_order() -> None:
    class WithVal(Auto):
        def validation_step(self, batch: t.Any, batch_idx: int) -> None:
            self._recorder.seen.append("validation_step")

    rec = Recorder()
    model = WithVal()
    model._recorder = rec  # type: ignore[attr-defined]
    trainer(callbacks=[rec], max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(
        model, data(n=8), data(n=8)
    )
    step_hooks = set(documented_order("should_optimizer_step", "on_optimizer_step"))
    coarse = [h for h in rec.seen if h not in step_hooks and h != "training_step"]
    assert coarse == [
        "on_after_setup", "on_fit_start", "on_train_start", "on_train_epoch_start",
        "on_train_batch_start", "on_train_batch_end",
        "on_validation_start", "on_validation_epoch_start", "on_validation_batch_start",
        "validation_step", "on_validation_batch_end", "on_validation_epoch_end",
        "on_validation_end", "on_train_epoch_end", "on_train_end", "on_fit_end",
    ]  # fmt: skip
    doc = documented_order("on_fit_start", "on_fit_end")
    fired = [h for h in coarse if h in doc]
    assert fired == [h for h in doc if h in fired]  # same relative order as the docstring


def test_module_hooks_run_after_callbacks() -> None:
    order: list[str] = []

    class CB(loopkit.Callback):
        def on_train_epoch_start(self, trainer: t.Any, pl_module: t.Any) -> None:
            order.append("callback")

    class M(Regressor):
        def on_train_epoch_start(self) -> None:
            order.append("module")

    trainer(callbacks=[CB()], max_epochs=1).fit(M(), data(n=8))
    assert order == ["callback", "module"]


def test_exception_fires_on_exception_and_not_the_end_hooks() -> None:
    class Boom(Auto):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("boom")

    rec = Recorder()
    model = Boom()
    model._recorder = rec  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="boom"):
        trainer(callbacks=[rec], max_epochs=1).fit(model, data(n=8))
    assert rec.seen[-1] == "on_exception"
    assert "on_train_end" not in rec.seen and "on_fit_end" not in rec.seen


def test_callback_hooks_receive_trainer_and_module() -> None:
    got: dict[str, t.Any] = {}

    class CB(loopkit.Callback):
        def on_train_batch_end(
            self, trainer: t.Any, pl_module: t.Any, outputs: t.Any, batch: t.Any, batch_idx: int
        ) -> None:
            got.update(trainer=trainer, module=pl_module, outputs=outputs, batch_idx=batch_idx)

        def on_before_optimizer_step(self, trainer: t.Any, optimizer: t.Any) -> None:
            got["optimizer_trainer"] = trainer

    model = Regressor()
    tr = trainer(callbacks=[CB()], max_steps=1)
    tr.fit(model, data(n=8))
    assert got["trainer"] is tr and got["module"] is model and got["optimizer_trainer"] is tr
    assert set(got["outputs"]) == {"loss"} and not got["outputs"]["loss"].requires_grad
    assert got["batch_idx"] == 0


def test_callback_with_an_unknown_required_parameter_is_rejected() -> None:
    class Bad(loopkit.Callback):
        def on_train_epoch_end(self, trainer: t.Any, pl_module: t.Any, unused: t.Any) -> None:
            pass

    with pytest.raises(loopkit.HookError, match=r"Bad\.on_train_epoch_end"):
        trainer(callbacks=[Bad()], max_epochs=1)
