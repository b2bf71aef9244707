"""Every scheduler config form of references 001 and 002, in loopkit.Trainer, step by step.

Each test trains a module whose ``configure_optimizers`` returns one of the documents' forms and
compares the learning rate of every optimizer at every training step (and the final weights)
with a plain PyTorch loop that steps the same torch schedulers by hand, by the documented rule:
``interval="step"`` after every ``frequency``-th optimizer step, ``interval="epoch"`` at the end
of every ``frequency``-th epoch, ``ReduceLROnPlateau`` with the monitored metric's value.
"""

from __future__ import annotations

import itertools
import typing as t

import pytest
import torch
from _schedulers_util import BATCHES_PER_EPOCH, Net, fit, plain_fit, same_weights, twin
from torch.optim import SGD, Adam
from torch.optim.lr_scheduler import (
    ExponentialLR,
    LambdaLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)

from loopkit_schedulers import Schedulers

BATCHES = BATCHES_PER_EPOCH  # 7


def changes(lrs: list[tuple[float, ...]], column: int = 0) -> int:
    """How many times the learning rate of one optimizer changed during the run."""
    values = [row[column] for row in lrs]
    return sum(a != b for a, b in itertools.pairwise(values))


def test_steplr_on_steps_with_frequency_2() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [
            {"scheduler": StepLR(opt, step_size=1, gamma=0.5), "interval": "step", "frequency": 2}
        ]

    module = Net(configure)
    ref = twin(module)
    run = fit(module, epochs=2)

    (opt,), (config,) = ref.configure_optimizers()
    done = [0]

    def after_batch(epoch: int, batch_idx: int) -> None:
        done[0] += 1
        if done[0] % 2 == 0:  # every second optimizer step, across the epoch boundary
            config["scheduler"].step()

    expected = plain_fit(ref, [opt], 2, after_batch=after_batch)
    assert module.lrs == expected
    # Halved after every second step, counted across the epoch boundary. Lightning counts the
    # batch index within the epoch instead ((batch_idx + 1) % 2): it would step after batches
    # 1, 3, 5 of each epoch and run step 8 (epoch 1, batch 1) at 0.125, not 0.0625.
    assert [row[0] for row in module.lrs] == [0.5 ** (k // 2) for k in range(14)]
    assert run.lr_scheduler_configs[0].scheduler.last_epoch == 7  # the 7th after the last batch
    assert same_weights(module, ref)
    assert run.global_step == 14


def test_steplr_on_epochs() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [StepLR(opt, step_size=1, gamma=0.5)]  # bare scheduler: interval "epoch"

    module = Net(configure)
    ref = twin(module)
    fit(module, epochs=3)

    (opt,), (sched,) = ref.configure_optimizers()
    expected = plain_fit(ref, [opt], 3, after_epoch=lambda epoch: sched.step())
    assert module.lrs == expected
    assert [row[0] for row in module.lrs[::BATCHES]] == [1.0, 0.5, 0.25]
    assert same_weights(module, ref)


def test_steplr_every_second_epoch() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": StepLR(opt, 1, gamma=0.5), "frequency": 2},
        }

    module = Net(configure)
    ref = twin(module)
    fit(module, epochs=5)

    returned = ref.configure_optimizers()
    opt, sched = returned["optimizer"], returned["lr_scheduler"]["scheduler"]
    expected = plain_fit(
        ref, [opt], 5, after_epoch=lambda epoch: (epoch + 1) % 2 == 0 and sched.step()
    )
    assert module.lrs == expected
    assert [row[0] for row in module.lrs[::BATCHES]] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert same_weights(module, ref)


def test_onecycle_per_step() -> None:
    total = 2 * BATCHES

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=0.1, momentum=0.9)
        sched = OneCycleLR(opt, max_lr=0.5, total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    module = Net(configure)
    ref = twin(module)
    fit(module, epochs=2)

    returned = ref.configure_optimizers()
    opt, sched = returned["optimizer"], returned["lr_scheduler"]["scheduler"]
    expected = plain_fit(ref, [opt], 2, after_batch=lambda e, b: sched.step())
    assert module.lrs == expected
    assert changes(expected) == total - 1  # a new learning rate at every step
    assert same_weights(module, ref)
    # OneCycleLR raises when stepped more than total_steps times: the run stepped it exactly
    # once per optimizer step (total_steps times), as the plain loop did.
    assert sched.last_epoch == total


def test_reduce_on_plateau_on_a_validation_metric() -> None:
    # The earliest document's form: mode="max", a monitor other than the default, epoch interval.
    recall = [0.5, 0.75, 0.75, 0.5, 0.75, 0.875, 0.875, 0.5]

    def configure(m: Net) -> t.Any:
        opt = Adam(m.a.parameters(), lr=0.1)
        config = {
            "scheduler": ReduceLROnPlateau(opt, mode="max", patience=1, factor=0.5),
            "monitor": "val_recall",
            "interval": "epoch",
            "frequency": 1,
        }
        return [opt], [config]

    module = Net(configure, val_script={"val_recall": recall})
    ref = twin(module)
    fit(module, epochs=len(recall), validate=True)

    (opt,), (config,) = ref.configure_optimizers()
    plateau = config["scheduler"]
    expected = plain_fit(
        ref, [opt], len(recall), after_epoch=lambda epoch: plateau.step(recall[epoch])
    )
    assert module.lrs == expected
    assert [row[0] for row in module.lrs[::BATCHES]] == [0.1] * 4 + [0.05] * 4
    assert same_weights(module, ref)


def test_two_optimizers_with_two_schedulers() -> None:
    # 001: return [opt1, opt2], [StepLR(opt1, ...), OneCycleLR(opt2, ...)]
    epochs = 3

    def configure(m: Net) -> t.Any:
        opt1 = Adam(m.a.parameters(), lr=0.1)
        opt2 = SGD(m.b.parameters(), lr=0.1)
        return [opt1, opt2], [
            StepLR(opt1, step_size=1, gamma=0.5),
            OneCycleLR(opt2, max_lr=0.3, total_steps=epochs),
        ]

    module = Net(configure)
    ref = twin(module)
    fit(module, epochs=epochs)

    opts, scheds = ref.configure_optimizers()

    def after_epoch(epoch: int) -> None:
        for sched in scheds:
            sched.step()

    expected = plain_fit(ref, opts, epochs, after_epoch=after_epoch)
    assert module.lrs == expected
    assert changes(expected, 0) == changes(expected, 1) == epochs - 1
    assert same_weights(module, ref)


def test_one_scheduler_for_the_first_of_two_optimizers() -> None:
    # 001: lr_schedulers = {'scheduler': ReduceLROnPlateau(opt1, ...), 'monitor': ...}
    metric = [4.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0]

    def configure(m: Net) -> t.Any:
        opt1 = Adam(m.a.parameters(), lr=0.2)
        opt2 = SGD(m.b.parameters(), lr=0.1)
        optimizers = [opt1, opt2]
        lr_schedulers = {
            "scheduler": ReduceLROnPlateau(opt1, patience=1, factor=0.1),
            "monitor": "metric_to_track",
        }
        return optimizers, lr_schedulers

    module = Net(configure, val_script={"metric_to_track": metric})
    ref = twin(module)
    fit(module, epochs=len(metric), validate=True)

    opts, config = ref.configure_optimizers()
    expected = plain_fit(
        ref, opts, len(metric), after_epoch=lambda e: config["scheduler"].step(metric[e])
    )
    assert module.lrs == expected
    assert changes(expected, 0) == 2 and changes(expected, 1) == 0
    assert same_weights(module, ref)


def _reference_002(form: str) -> t.Callable[[Net], t.Any]:
    """The return forms of 002's "Learning rate scheduling" and "Use multiple optimizers"."""

    def configure(m: Net) -> t.Any:
        adam = Adam(m.a.parameters(), lr=0.1)
        sgd = SGD(m.b.parameters(), lr=0.1)
        if form == "adam + plateau":
            return [adam], [ReduceLROnPlateau(adam, patience=0)]
        if form == "two optimizers each with a scheduler":
            return [adam, sgd], [ReduceLROnPlateau(adam, patience=0), LambdaLR(sgd, _halve)]
        if form == "additional params for the first":
            schedulers = [
                {
                    "scheduler": ReduceLROnPlateau(adam, mode="max", patience=1),
                    "monitor": "val_recall",  # Default: val_loss
                    "interval": "epoch",
                    "frequency": 1,
                },
                LambdaLR(sgd, _halve),
            ]
            return [adam, sgd], schedulers
        assert form == "two optimizers, one scheduler for adam only"
        return [adam, sgd], [ReduceLROnPlateau(adam, patience=0)]

    return configure


def _halve(epoch: int) -> float:
    return 0.5**epoch


FORMS_002 = [
    "adam + plateau",
    "two optimizers each with a scheduler",
    "additional params for the first",
    "two optimizers, one scheduler for adam only",
]


@pytest.mark.parametrize("form", FORMS_002)
def test_reference_002_forms(form: str) -> None:
    epochs = 5
    script = {"val_loss": [3.0, 2.0, 2.0, 2.0, 1.0], "val_recall": [0.5, 0.5, 0.25, 0.25, 0.75]}
    module = Net(_reference_002(form), val_script=script)
    ref = twin(module)
    run = fit(module, epochs=epochs, validate=True)

    opts, scheds = ref.configure_optimizers()

    def after_epoch(epoch: int) -> None:
        # 002's pseudocode: after each epoch, "for scheduler in schedulers: scheduler.step()";
        # a plateau scheduler reads its monitor (val_loss unless the config names another).
        for item in scheds:
            sched = item["scheduler"] if isinstance(item, dict) else item
            if isinstance(sched, ReduceLROnPlateau):
                monitor = item["monitor"] if isinstance(item, dict) else "val_loss"
                sched.step(script[monitor][epoch])
            else:
                sched.step()

    expected = plain_fit(ref, opts, epochs, after_epoch=after_epoch)
    assert module.lrs == expected
    assert changes(expected, 0) >= 1  # the plateau scheduler did reduce
    assert same_weights(module, ref)
    plugin = run.fabric.get_plugin("schedulers")
    assert isinstance(plugin, Schedulers)
    assert [c.monitor for c in plugin.configs if c.reduce_on_plateau] == [
        "val_recall" if form == "additional params for the first" else "val_loss"
    ]


def test_list_of_optimizer_dicts_each_with_its_scheduler() -> None:
    def configure(m: Net) -> t.Any:
        opt1 = SGD(m.a.parameters(), lr=1.0)
        opt2 = SGD(m.b.parameters(), lr=1.0)
        return [
            {
                "optimizer": opt1,
                "lr_scheduler": {"scheduler": StepLR(opt1, 1, 0.5), "interval": "step",
                                 "frequency": 3},
            },
            {"optimizer": opt2, "lr_scheduler": ExponentialLR(opt2, gamma=0.9)},
        ]  # fmt: skip

    module = Net(configure)
    ref = twin(module)
    fit(module, epochs=2)

    returned = ref.configure_optimizers()
    opts = [d["optimizer"] for d in returned]
    step_sched = returned[0]["lr_scheduler"]["scheduler"]
    epoch_sched = returned[1]["lr_scheduler"]
    done = [0]

    def after_batch(epoch: int, batch_idx: int) -> None:
        done[0] += 1
        if done[0] % 3 == 0:
            step_sched.step()

    expected = plain_fit(
        ref, opts, 2, after_batch=after_batch, after_epoch=lambda e: epoch_sched.step()
    )
    assert module.lrs == expected
    assert changes(expected, 0) == 4 and changes(expected, 1) == 1
    assert same_weights(module, ref)


def test_step_interval_counts_the_steps_of_its_own_optimizer() -> None:
    # 001's alternating schedule: optimizer B steps every second batch (an optimizer_step
    # override). B's step-interval scheduler counts B's steps, not batches.
    def configure(m: Net) -> t.Any:
        opt_a = SGD(m.a.parameters(), lr=1.0)
        opt_b = SGD(m.b.parameters(), lr=1.0)
        return [opt_a, opt_b], [
            {"scheduler": StepLR(opt_a, 1, 0.5), "interval": "step", "frequency": 4},
            {"scheduler": StepLR(opt_b, 1, 0.5), "interval": "step", "frequency": 2},
        ]

    class Alternating(Net):
        def optimizer_step(  # type: ignore[override]
            self, epoch, batch_idx, optimizer, optimizer_idx, optimizer_closure,
            on_tpu=False, using_native_amp=False, using_lbfgs=False,
        ):  # fmt: skip
            if optimizer_idx == 0:
                optimizer.step(closure=optimizer_closure)
            if optimizer_idx == 1 and (batch_idx + 1) % 2 == 0:
                optimizer.step(closure=optimizer_closure)

    module = Alternating(configure)
    ref = twin(module)
    fit(module, epochs=2)

    opts, configs = ref.configure_optimizers()
    sched_a, sched_b = (c["scheduler"] for c in configs)
    count = {"a": 0, "b": 0}

    def after_batch(epoch: int, batch_idx: int) -> None:
        count["a"] += 1
        if count["a"] % 4 == 0:
            sched_a.step()
        if (batch_idx + 1) % 2 == 0:  # B stepped in this batch
            count["b"] += 1
            if count["b"] % 2 == 0:
                sched_b.step()

    expected = plain_fit(
        ref, opts, 2, after_batch=after_batch,
        steps=lambda idx, batch_idx: idx == 0 or (batch_idx + 1) % 2 == 0,
    )  # fmt: skip
    assert module.lrs == expected
    # B stepped 3 times per epoch (batches 1, 3, 5): its scheduler stepped after B's 2nd, 4th
    # and 6th steps (epoch 0 batch 3, epoch 1 batches 1 and 5).
    assert changes(expected, 1) == 3
    assert same_weights(module, ref)


def test_scheduler_is_not_stepped_on_a_batch_whose_step_was_skipped() -> None:
    # training_step returning None skips the optimizer step: no step, no scheduler step.
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [{"scheduler": StepLR(opt, 1, 0.5), "interval": "step"}]

    class Skipping(Net):
        def training_step(self, batch, batch_idx, optimizer_idx=0):  # type: ignore[override]
            loss = super().training_step(batch, batch_idx, optimizer_idx)
            return None if batch_idx % 3 == 0 else loss

    module = Skipping(configure)
    with pytest.warns(UserWarning, match="returned None"):
        run = fit(module, epochs=1)
    assert run.global_step == 4  # batches 1, 2, 4, 5 stepped; 0, 3, 6 were skipped
    assert [row[0] for row in module.lrs] == [1.0, 1.0, 0.5, 0.25, 0.25, 0.125, 0.0625]


def test_lr_scheduler_step_override_of_the_module() -> None:
    # A module may step its schedulers itself (schedulers outside torch's API):
    # lr_scheduler_step(scheduler, metric), metric being None unless the scheduler is monitored.
    seen: list[tuple[str, float | None]] = []

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        plateau = ReduceLROnPlateau(opt, patience=0)
        return [opt], [{"scheduler": StepLR(opt, 1, 0.5), "interval": "step"}, plateau]

    class Custom(Net):
        def lr_scheduler_step(self, scheduler: t.Any, metric: float | None) -> None:
            seen.append((type(scheduler).__name__, metric))
            if metric is None:
                scheduler.step()
            else:
                scheduler.step(metric)

    module = Custom(configure, val_script={"val_loss": [1.0, 0.5]})
    fit(module, epochs=2, validate=True)
    assert seen.count(("StepLR", None)) == 2 * BATCHES
    assert [s for s in seen if s[0] == "ReduceLROnPlateau"] == [
        ("ReduceLROnPlateau", 1.0),
        ("ReduceLROnPlateau", 0.5),
    ]
    assert seen.index(("ReduceLROnPlateau", 1.0)) == BATCHES  # after the epoch's 7 steps


def test_custom_scheduler_without_torch_base_class() -> None:
    class Halving:
        """Not a torch scheduler: an object with step() and an optimizer attribute."""

        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

        def step(self) -> None:
            for group in self.optimizer.param_groups:
                group["lr"] /= 2

    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [{"scheduler": Halving(opt), "interval": "step", "frequency": 3}]

    module = Net(configure)
    run = fit(module, epochs=1)
    assert [row[0] for row in module.lrs] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    assert run.fabric.get_plugin("schedulers").state_dict()["schedulers"] == [None]
