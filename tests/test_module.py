"""LoopModule: hparams, device, trainer access, optimizers(), lr_schedulers(), toggling."""

from __future__ import annotations

import typing as t

import pytest
import torch
from _trainer_util import Regressor, data, trainer
from torch.optim.lr_scheduler import ExponentialLR, StepLR

import loopkit
from loopkit.plugins import Registry


def test_save_hyperparameters_reads_init_arguments() -> None:
    class M(loopkit.LoopModule):
        def __init__(self, learning_rate: float, hidden: int = 8, *, name: str = "m") -> None:
            super().__init__()
            self.save_hyperparameters()

    m = M(0.5, name="x")
    assert m.hparams == {"learning_rate": 0.5, "hidden": 8, "name": "x"}
    assert m.hparams.learning_rate == 0.5
    with pytest.raises(AttributeError, match="hparams has no 'lr'; saved names: learning_rate"):
        m.hparams.lr  # noqa: B018


def test_save_hyperparameters_selection_ignore_and_dict() -> None:
    class M(loopkit.LoopModule):
        def __init__(self, a: int = 1, b: int = 2, c: int = 3, **extra: t.Any) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c")

    assert M().hparams == {"a": 1, "c": 3}

    class N(loopkit.LoopModule):
        def __init__(self, a: int = 1, net: t.Any = None, **extra: t.Any) -> None:
            super().__init__()
            self.save_hyperparameters(ignore="net")

    assert N(net=object(), z=5).hparams == {"a": 1, "z": 5}
    m = loopkit.LoopModule()
    m.save_hyperparameters({"lr": 0.1})
    assert m.hparams.lr == 0.1

    class Bad(loopkit.LoopModule):
        def __init__(self, a: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters("b")

    with pytest.raises(ValueError, match="'b' not among the caller's arguments"):
        Bad()


def test_trainer_is_an_error_outside_a_run_and_device_follows_parameters() -> None:
    m = Regressor()
    with pytest.raises(RuntimeError, match="Regressor is not attached to a Trainer"):
        m.trainer  # noqa: B018
    assert m.device == torch.device("cpu")
    assert loopkit.LoopModule().device == torch.device("cpu")
    assert m.current_epoch == 0 and m.global_step == 0


def test_optimizers_and_lr_schedulers_shapes() -> None:
    seen: dict[str, t.Any] = {}

    class One(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            seen["opt"] = self.optimizers()
            seen["raw"] = self.optimizers(use_pl_optimizer=False)
            seen["sched"] = self.lr_schedulers()

    trainer(max_epochs=1).fit(One(), data(n=8))
    assert isinstance(seen["opt"], torch.optim.SGD)  # the wrapper passes for the optimizer
    assert type(seen["raw"]) is torch.optim.SGD and seen["opt"].optimizer is seen["raw"]
    assert seen["sched"] is None

    class Two(One):
        def configure_optimizers(self) -> t.Any:
            a = torch.optim.SGD(self.parameters(), lr=0.1)
            b = torch.optim.Adam(self.parameters())
            return [a, b], [StepLR(a, 1), ExponentialLR(b, 0.9)]

    trainer(max_epochs=1).fit(Two(), data(n=8))
    assert isinstance(seen["opt"], list) and len(seen["opt"]) == 2
    assert [type(s) for s in seen["sched"]] == [StepLR, ExponentialLR]


def test_toggling_without_the_plugin_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loopkit.module.registry", lambda: Registry([]))
    monkeypatch.setattr("loopkit.trainer.registry", lambda: Registry([]))
    errors: list[str] = []

    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            opt = self.optimizers()
            for attempt in (
                lambda: self.toggle_optimizer(opt),
                lambda: self.untoggle_optimizer(opt),
                lambda: opt.toggle_model(sync_grad=False).__enter__(),
            ):
                with pytest.raises(RuntimeError, match="pip install loopkit-toggling") as info:
                    attempt()
                errors.append(str(info.value))

    trainer(max_epochs=1).fit(M(), data(n=8))
    assert len(errors) == 3


def test_toggle_optimizer_with_the_plugin() -> None:
    pytest.importorskip("loopkit_toggling")
    flags: list[tuple[bool, bool]] = []

    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(4, 1)
            self.automatic_optimization = False

        def configure_optimizers(self) -> t.Any:
            return (
                torch.optim.SGD(self.layer.parameters(), lr=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1),
            )

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            a, b = self.optimizers()
            self.toggle_optimizer(a)
            flags.append((self.layer.weight.requires_grad, self.head.weight.requires_grad))
            self.untoggle_optimizer(a)
            with b.toggle_model():
                flags.append((self.layer.weight.requires_grad, self.head.weight.requires_grad))
            flags.append((self.layer.weight.requires_grad, self.head.weight.requires_grad))

    trainer(max_epochs=1).fit(M(), data(n=8))
    assert flags == [(True, False), (False, True), (True, True)]


def test_automatic_multiple_optimizers_toggle_when_the_plugin_is_present() -> None:
    pytest.importorskip("loopkit_toggling")
    flags: list[tuple[int, bool, bool]] = []

    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(4, 1)

        def configure_optimizers(self) -> t.Any:
            return (
                torch.optim.SGD(self.layer.parameters(), lr=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1),
            )

        def training_step(self, batch: t.Any, batch_idx: int, optimizer_idx: int) -> t.Any:
            flags.append(
                (optimizer_idx, self.layer.weight.requires_grad, self.head.weight.requires_grad)
            )
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x) + self.head(x), y)

    trainer(max_steps=1).fit(M(), data(n=8))
    assert flags == [(0, True, False), (1, False, True)]


def test_accumulate_grad_batches_with_the_plugin() -> None:
    pytest.importorskip("loopkit_accumulation")
    from _trainer_util import same_weights, twin

    torch.manual_seed(0)
    model = Regressor()
    ref = twin(model)
    tr = trainer(max_epochs=1, accumulate_grad_batches=2)
    tr.fit(model, data(n=48, batch_size=8))
    assert tr.global_step == 3
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for i, batch in enumerate(data(n=48, batch_size=8)):
        (ref.compute_loss(batch) / 2).backward()
        if (i + 1) % 2 == 0:
            opt.step()
            opt.zero_grad()
    assert same_weights(model, ref)


def test_accumulation_without_the_plugin_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("loopkit.trainer.registry", lambda: Registry([]))
    with pytest.raises(RuntimeError, match="pip install loopkit-accumulation"):
        trainer(max_epochs=1, accumulate_grad_batches=4).fit(Regressor(), data(n=8))


def test_manual_steps_with_a_scheduler_go_through_fabric_and_count() -> None:
    stepped: list[int] = []

    class CB(loopkit.Callback):
        def on_optimizer_step(self, trainer: t.Any, optimizer: t.Any) -> None:
            stepped.append(trainer.global_step)

    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def configure_optimizers(self) -> t.Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [StepLR(opt, 1)]  # a torch scheduler patches the optimizer's step

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.compute_loss(batch))
            opt.step()
            self.lr_schedulers().step()

    model = M()
    tr = trainer(max_epochs=1, callbacks=[CB()])
    tr.fit(model, data(n=24, batch_size=8))
    assert stepped == [0, 1, 2] and tr.global_step == 3
    raw = model.optimizers().optimizer
    assert type(raw) is torch.optim.SGD
    assert not any(isinstance(v, loopkit.Trainer) for v in vars(raw).values())


def test_two_optimizers_stepping_in_one_batch_count_once() -> None:
    class M(Regressor):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(4, 1)
            self.automatic_optimization = False

        def configure_optimizers(self) -> t.Any:
            return (
                torch.optim.SGD(self.layer.parameters(), lr=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1),
            )

        def training_step(self, batch: t.Any, batch_idx: int) -> None:
            for opt in self.optimizers():
                opt.zero_grad()
                x, y = batch
                self.manual_backward(torch.nn.functional.mse_loss(self.layer(x) + self.head(x), y))
                opt.step()

    tr = trainer(max_steps=4)
    tr.fit(M(), data(n=48, batch_size=8))
    assert tr.global_step == 4 and tr.progress.total_batches == 4  # not 2 batches
