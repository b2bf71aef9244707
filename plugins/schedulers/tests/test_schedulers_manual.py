"""Manual optimization: nothing is stepped for the user; ``lr_schedulers()`` hands them over.

Also: the plugin named in ``plugins=`` is the one that steps (a scheduler is never stepped twice).
"""

from __future__ import annotations

import typing as t

import pytest
from _schedulers_util import BATCHES_PER_EPOCH, Net, batches, fit, lr_of, same_weights, twin
from torch.optim import SGD
from torch.optim.lr_scheduler import ExponentialLR, StepLR

from loopkit_schedulers import Schedulers


class Manual(Net):
    """Steps its optimizers itself; ``step_schedulers`` says whether it steps the schedulers."""

    def __init__(self, configure: t.Any, step_schedulers: bool) -> None:
        super().__init__(configure)
        self.automatic_optimization = False
        self.step_schedulers = step_schedulers
        self.handed: list[t.Any] = []

    def training_step(self, batch, batch_idx, optimizer_idx=0):  # type: ignore[no-untyped-def]
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        self.lrs.append(tuple(lr_of(o) for o in opts))
        for idx, opt in enumerate(opts):
            opt.zero_grad()
            self.manual_backward(self.loss(idx, batch))
            opt.step()
        schedulers = self.lr_schedulers()
        self.handed.append(schedulers)
        if self.step_schedulers:
            for sch in schedulers if isinstance(schedulers, list) else [schedulers]:
                sch.step()


def one_scheduler(m: Net) -> t.Any:
    opt = SGD(m.a.parameters(), lr=1.0)
    return [opt], [{"scheduler": StepLR(opt, 1, 0.5), "interval": "step", "frequency": 3}]


def two_schedulers(m: Net) -> t.Any:
    opt1, opt2 = SGD(m.a.parameters(), lr=1.0), SGD(m.b.parameters(), lr=1.0)
    return [opt1, opt2], [StepLR(opt1, 1, 0.5), ExponentialLR(opt2, 0.9)]


def test_manual_mode_ignores_config_keys_with_one_warning_and_steps_nothing() -> None:
    module = Manual(one_scheduler, step_schedulers=False)
    with pytest.warns(UserWarning, match="manual optimization ignores scheduler settings") as rec:
        fit(module, epochs=2)
    assert len([w for w in rec if "ignores scheduler settings" in str(w.message)]) == 1
    # Neither the step interval nor the epoch end stepped the scheduler.
    assert {row[0] for row in module.lrs} == {1.0}
    assert module.handed[0].last_epoch == 0


def test_manual_mode_hands_the_schedulers_over_and_the_user_steps_them() -> None:
    module = Manual(two_schedulers, step_schedulers=True)
    ref = twin(module)
    fit(module, epochs=2)
    # lr_schedulers(): the scheduler objects configure_optimizers returned, as a list for two.
    sch1, sch2 = module.handed[0]
    assert isinstance(sch1, StepLR) and isinstance(sch2, ExponentialLR)

    (opt1, opt2), (ref1, ref2) = ref.configure_optimizers()
    expected = []
    for _ in range(2):
        for batch in batches():
            expected.append((lr_of(opt1), lr_of(opt2)))
            for idx, opt in enumerate((opt1, opt2)):
                opt.zero_grad()
                ref.loss(idx, batch).backward()
                opt.step()
            ref1.step()  # "step every batch", by the user; never again by the plugin
            ref2.step()
    assert module.lrs == expected
    assert sch1.last_epoch == 2 * BATCHES_PER_EPOCH
    assert same_weights(module, ref)


def test_one_scheduler_is_returned_alone() -> None:
    module = Manual(one_scheduler, step_schedulers=True)
    with pytest.warns(UserWarning, match="ignores scheduler settings"):
        fit(module, epochs=1)
    assert isinstance(module.handed[0], StepLR)
    # The user's own cadence (every batch), not the config's (every third step).
    assert [row[0] for row in module.lrs] == [0.5**k for k in range(BATCHES_PER_EPOCH)]


def test_the_plugin_named_in_plugins_does_not_step_in_manual_mode() -> None:
    module = Manual(one_scheduler, step_schedulers=False)
    with pytest.warns(UserWarning, match="ignores scheduler settings"):
        run = fit(module, epochs=1, plugins=["schedulers"])
    plugin = run.fabric.get_plugin("schedulers")
    assert isinstance(plugin, Schedulers) and not plugin.active
    assert {row[0] for row in module.lrs} == {1.0}


def test_the_plugin_named_in_plugins_steps_once_in_automatic_mode() -> None:
    def configure(m: Net) -> t.Any:
        opt = SGD(m.a.parameters(), lr=1.0)
        return [opt], [{"scheduler": StepLR(opt, 1, 0.5), "interval": "step"}]

    module = Net(configure)
    run = fit(module, epochs=1, plugins=["schedulers"])
    attached = [p for p in run.fabric.plugins if isinstance(p, Schedulers)]
    assert attached[0].active and all(not p.active for p in attached[1:])
    assert [row[0] for row in module.lrs] == [0.5**k for k in range(BATCHES_PER_EPOCH)]
    assert run.lr_scheduler_configs[0].scheduler.last_epoch == BATCHES_PER_EPOCH
