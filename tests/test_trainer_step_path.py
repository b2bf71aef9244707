"""Automatic optimization's lean path: for one of torch's optimizers the Trainer may run the
closure's work itself and then step without a closure. Whatever a user can observe must be what
``optimizer.step(closure=...)`` gives: hook order, step pre-hooks, optimizers that call the
closure more than once, grad mode, weights."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, plain_closure_loop, same_weights, trainer, twin
from torch.optim.optimizer import register_optimizer_step_pre_hook

import loopkit.automatic


class Recorder(Regressor):
    """Notes training_step and the step hooks, in the order they run."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        self.events.append("training_step")
        return self.compute_loss(batch)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.events.append("on_before_backward")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.events.append("on_before_optimizer_step")

    def on_optimizer_step(self) -> None:
        self.events.append("on_optimizer_step")


def test_the_lean_path_is_taken_for_a_plain_sgd() -> None:
    # The tests below compare against it: make sure it is the path that runs by default.
    model = Regressor()
    tr = trainer(max_steps=1)
    taken: list[bool] = []
    original = loopkit.automatic._AutomaticStep._simple_with_closure

    def spy(self: t.Any, *args: t.Any) -> t.Any:
        taken.append(True)
        return original(self, *args)

    loopkit.automatic._AutomaticStep._simple_with_closure = spy  # type: ignore[method-assign]
    try:
        tr.fit(model, data())
    finally:
        loopkit.automatic._AutomaticStep._simple_with_closure = original  # type: ignore[method-assign]
    assert taken == [] and tr.global_step == 1


def test_hook_order_of_one_batch() -> None:
    model = Recorder()
    trainer(max_steps=1).fit(model, data())
    assert model.events == [
        "training_step",
        "on_before_backward",
        "on_before_optimizer_step",
        "on_optimizer_step",
    ]


def test_a_step_pre_hook_runs_before_training_step() -> None:
    # torch runs step pre-hooks before the step evaluates its closure.
    class M(Recorder):
        def configure_optimizers(self) -> t.Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            opt.register_step_pre_hook(lambda *_: self.events.append("pre_hook"))
            opt.register_step_post_hook(lambda *_: self.events.append("post_hook"))
            return opt

    model = M()
    trainer(max_steps=2).fit(model, data())
    assert model.events == 2 * [
        "pre_hook",
        "training_step",
        "on_before_backward",
        "on_before_optimizer_step",
        "post_hook",
        "on_optimizer_step",
    ]


def test_a_global_step_pre_hook_runs_before_training_step() -> None:
    model = Recorder()
    handle = register_optimizer_step_pre_hook(lambda *_: model.events.append("global_pre_hook"))
    try:
        trainer(max_steps=2).fit(model, data())
    finally:
        handle.remove()
    assert model.events[:2] == ["global_pre_hook", "training_step"]
    assert model.events.count("global_pre_hook") == 2


class TwiceSGD(torch.optim.SGD):
    """An optimizer of the user's that evaluates the closure twice per step (SAM-like)."""

    def step(self, closure: t.Any = None) -> t.Any:  # type: ignore[override]
        assert closure is not None, "TwiceSGD needs a closure"
        with torch.enable_grad():
            closure()
            loss = closure()
        super().step()
        return loss


def test_an_optimizer_subclass_that_overrides_step_gets_the_closure() -> None:
    torch.manual_seed(0)
    calls = {"n": 0}

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            calls["n"] += 1
            return self.compute_loss(batch)

        def configure_optimizers(self) -> t.Any:
            return TwiceSGD(self.parameters(), lr=0.1)

    model = M()
    ref = twin(model)
    tr = trainer(max_epochs=1)
    tr.fit(model, data())
    assert calls["n"] == 12 and tr.global_step == 6
    plain_closure_loop(ref, TwiceSGD(ref.parameters(), lr=0.1))
    assert same_weights(model, ref)


def test_fit_under_no_grad_trains_as_the_closure_would() -> None:
    # torch's step evaluates the closure under enable_grad, so fit under no_grad still trains.
    torch.manual_seed(0)
    model = Regressor()
    ref = twin(model)
    with torch.no_grad():
        trainer(max_epochs=2).fit(model, data())
    plain_closure_loop(ref, torch.optim.SGD(ref.parameters(), lr=0.1), epochs=2)
    assert same_weights(model, ref)


@pytest.mark.parametrize(
    "opt_cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad]
)
def test_weights_equal_the_closure_loop(opt_cls: type) -> None:
    torch.manual_seed(0)

    class M(Regressor):
        def configure_optimizers(self) -> t.Any:
            return opt_cls(self.parameters(), lr=0.01)

    model = M()
    ref = twin(model)
    trainer(max_epochs=2).fit(model, data())
    plain_closure_loop(ref, opt_cls(ref.parameters(), lr=0.01), epochs=2)
    assert same_weights(model, ref)


def test_a_loss_dict_and_a_none_on_the_lean_path() -> None:
    torch.manual_seed(0)
    seen: list[t.Any] = []

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> t.Any:
            if batch_idx == 1:
                return None
            return {"loss": self.compute_loss(batch), "extra": batch_idx}

        def on_train_batch_end(self, outputs: t.Any, batch_idx: int) -> None:
            seen.append(outputs)

    model = M()
    ref = twin(model)
    tr = trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="returned None"):
        tr.fit(model, data())
    assert tr.global_step == 5
    assert seen[1] is None and seen[0]["extra"] == 0 and not seen[0]["loss"].requires_grad
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i, batch in enumerate(data()):
        if i == 1:
            continue
        loss = ref.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert same_weights(model, ref)



def _patch_step(owner: t.Any, seen: list[object]) -> None:
    step = owner.step

    def patched(closure: t.Any = None, **kwargs: t.Any) -> t.Any:
        seen.append(closure)
        return step(closure, **kwargs)

    owner.step = patched


@pytest.mark.parametrize(
    ("where", "when"),
    [
        ("optimizer", "configure_optimizers"),
        ("optimizer", "on_train_start"),  # after the trainer chose its path for this fit
        ("wrapper", "on_train_start"),  # the optimizer self.optimizers() returns
    ],
)
def test_a_patched_step_gets_the_closure(where: str, when: str) -> None:
    seen: list[object] = []

    class M(Regressor):
        def configure_optimizers(self) -> t.Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            if when == "configure_optimizers":
                _patch_step(opt, seen)
            return opt

        def on_train_start(self) -> None:
            if when == "on_train_start":
                opt = self.trainer.optimizers[0]
                _patch_step(opt.optimizer if where == "optimizer" else opt, seen)

    trainer(max_steps=3).fit(M(), data())
    assert len(seen) == 3 and all(callable(c) for c in seen)
