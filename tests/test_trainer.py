"""Trainer, automatic optimization: weights equal a plain loop; counters; stop conditions."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, plain_closure_loop, same_weights, trainer, twin
from torch import nn

import loopkit


def plain_loop(model: Regressor, loader: t.Any, epochs: int, opt: torch.optim.Optimizer) -> None:
    for _ in range(epochs):
        for batch in loader:
            loss = model.compute_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_automatic_optimization_equals_plain_loop(opt_cls: type) -> None:
    torch.manual_seed(0)

    class M(Regressor):
        def configure_optimizers(self) -> t.Any:
            return opt_cls(self.parameters(), lr=0.05)

    model = M()
    ref = twin(model)
    trainer(max_epochs=3).fit(model, data())
    plain_loop(ref, data(), 3, opt_cls(ref.parameters(), lr=0.05))
    assert same_weights(model, ref)


def test_counters_after_fit() -> None:
    model = Regressor()
    tr = trainer(max_epochs=2)
    tr.fit(model, data(n=48, batch_size=8))
    assert tr.current_epoch == 2  # epochs completed, as in Lightning
    assert tr.global_step == 12
    assert tr.num_training_batches == 6
    assert tr.estimated_stepping_batches == 12


def test_max_steps_stops_mid_epoch() -> None:
    torch.manual_seed(0)
    model = Regressor()
    ref = twin(model)
    tr = trainer(max_steps=4)
    tr.fit(model, data(n=48, batch_size=8))
    assert tr.global_step == 4
    assert tr.current_epoch == 1
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i, batch in enumerate(data(n=48, batch_size=8)):
        if i == 4:
            break
        loss = ref.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert same_weights(model, ref)


def test_should_stop_finishes_the_batch_and_epoch() -> None:
    seen: list[tuple[str, int]] = []

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

        def on_train_batch_end(self, outputs: t.Any, batch: t.Any, batch_idx: int) -> None:
            seen.append(("batch_end", batch_idx))

        def on_train_epoch_end(self) -> None:
            seen.append(("epoch_end", self.trainer.current_epoch))

    tr = trainer(max_epochs=5)
    tr.fit(M(), data())
    assert seen == [("batch_end", 0), ("batch_end", 1), ("batch_end", 2), ("epoch_end", 0)]
    assert tr.global_step == 3
    assert tr.current_epoch == 1


def test_is_last_batch_and_limit_train_batches() -> None:
    flags: list[tuple[int, bool]] = []

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            flags.append((batch_idx, self.trainer.is_last_batch))
            return super().training_step(batch, batch_idx)

    tr = trainer(max_epochs=1, limit_train_batches=3)
    tr.fit(M(), data())
    assert flags == [(0, False), (1, False), (2, True)]
    assert tr.num_training_batches == 3


def test_is_last_batch_without_length() -> None:
    flags: list[bool] = []
    batches = list(data(n=24, batch_size=8))

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            flags.append(self.trainer.is_last_batch)
            return super().training_step(batch, batch_idx)

    tr = trainer(max_epochs=1)
    tr.fit(M(), (b for b in batches))  # a generator: no len()
    assert flags == [False, False, True]


def test_training_step_dict_with_loss_equals_tensor() -> None:
    torch.manual_seed(0)

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> dict[str, t.Any]:
            return {"loss": self.compute_loss(batch), "extra": 1}

    model = M()
    ref = twin(model)
    trainer(max_epochs=1).fit(model, data())
    plain_loop(ref, data(), 1, torch.optim.SGD(ref.parameters(), lr=0.1))
    assert same_weights(model, ref)


def test_training_step_none_skips_the_step_with_one_warning() -> None:
    torch.manual_seed(0)

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> t.Any:
            if batch_idx % 2 == 1:
                return None
            return self.compute_loss(batch)

    model = M()
    ref = twin(model)
    tr = trainer(max_epochs=1)
    with pytest.warns(UserWarning, match="returned None") as record:
        tr.fit(model, data())
    assert sum("returned None" in str(w.message) for w in record) == 1
    assert tr.global_step == 3
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i, batch in enumerate(data()):
        if i % 2 == 1:
            continue
        loss = ref.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert same_weights(model, ref)


def test_lbfgs_in_automatic_optimization() -> None:
    torch.manual_seed(0)
    calls = {"n": 0}

    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            calls["n"] += 1
            return self.compute_loss(batch)

        def configure_optimizers(self) -> t.Any:
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

    model = M()
    ref = twin(model)
    tr = trainer(max_epochs=1)
    tr.fit(model, data())
    assert calls["n"] > tr.global_step == 6  # the closure is re-evaluated
    plain_closure_loop(ref, torch.optim.LBFGS(ref.parameters(), lr=0.5, max_iter=4))
    assert same_weights(model, ref)


def test_gradient_clip_val_clips_before_the_step() -> None:
    torch.manual_seed(0)
    model = Regressor(lr=0.5)
    ref = twin(model)
    trainer(max_epochs=1, gradient_clip_val=0.01).fit(model, data())
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for batch in data():
        loss = ref.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.01)
        opt.step()
    assert same_weights(model, ref)


def test_gradient_clip_by_value() -> None:
    torch.manual_seed(0)
    model = Regressor(lr=0.5)
    ref = twin(model)
    trainer(max_epochs=1, gradient_clip_val=0.02, gradient_clip_algorithm="value").fit(
        model, data()
    )
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for batch in data():
        loss = ref.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(list(ref.parameters()), 0.02)
        opt.step()
    assert same_weights(model, ref)


def test_fit_twice_continues_counters() -> None:
    model = Regressor()
    tr = trainer(max_epochs=1)
    tr.fit(model, data())
    tr.max_epochs = 2
    tr.fit(model, data())
    assert tr.current_epoch == 2
    assert tr.global_step == 12


def test_on_train_batch_start_minus_one_ends_the_epoch() -> None:
    class M(Regressor):
        def on_train_batch_start(self, batch: t.Any, batch_idx: int) -> int | None:
            return -1 if batch_idx == 2 else None

    tr = trainer(max_epochs=2)
    tr.fit(M(), data())
    assert tr.global_step == 4  # two batches in each of two epochs


# -- bad input -------------------------------------------------------------------------------


def test_max_epochs_and_max_steps_both_unset() -> None:
    with pytest.raises(ValueError, match="neither max_epochs nor max_steps"):
        trainer()


def test_missing_optimizer_idx_with_several_optimizers() -> None:
    class Two(Regressor):
        def configure_optimizers(self) -> t.Any:
            return torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())

    with pytest.raises(TypeError, match="takes no optimizer_idx") as info:
        trainer(max_epochs=1).fit(Two(), data())
    assert "Two.training_step" in str(info.value)
    assert "automatic_optimization = False" in str(info.value)


def test_manual_backward_under_automatic_optimization() -> None:
    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            loss = self.compute_loss(batch)
            self.manual_backward(loss)
            return loss

    with pytest.raises(RuntimeError, match="manual_backward\\(\\) is for manual optimization"):
        trainer(max_epochs=1).fit(M(), data())


def test_fit_takes_a_loop_module() -> None:
    with pytest.raises(TypeError, match=r"takes a loopkit\.LoopModule, got Linear"):
        trainer(max_epochs=1).fit(nn.Linear(2, 2), data())  # type: ignore[arg-type]


def test_training_step_returning_a_string_is_an_error() -> None:
    class M(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> t.Any:
            return {"not_loss": 1}

    with pytest.raises(TypeError, match="a dict without a 'loss' key"):
        trainer(max_epochs=1).fit(M(), data())


def test_manual_optimization_rejects_accumulate_and_clip() -> None:
    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="Accumulate by hand"):
        trainer(max_epochs=1, accumulate_grad_batches=2).fit(M(), data())
    with pytest.raises(ValueError, match=r"self\.clip_gradients"):
        trainer(max_epochs=1, gradient_clip_val=1.0).fit(M(), data())


def test_unknown_trainer_argument_values() -> None:
    with pytest.raises(ValueError, match="accumulate_grad_batches=0"):
        trainer(max_epochs=1, accumulate_grad_batches=0)
    with pytest.raises(ValueError, match="gradient_clip_algorithm='l2'"):
        trainer(max_epochs=1, gradient_clip_algorithm="l2")
    with pytest.raises(ValueError, match=r"limit_train_batches=1\.5"):
        trainer(max_epochs=1, limit_train_batches=1.5)


def test_exports() -> None:
    assert loopkit.Trainer.__module__ == "loopkit.trainer"
    assert loopkit.LoopModule.__module__ == "loopkit.module"
    assert loopkit.Callback.__module__ == "loopkit.callbacks"
