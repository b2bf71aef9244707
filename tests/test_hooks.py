"""The hook catalogue: what is declared, the docstring that documents it, and Fabric's firing."""

from __future__ import annotations

import re

import torch

import loopkit.hooks as hooks
from loopkit import Fabric
from loopkit.hooks import ALIASES, FABRIC_FIRES, HOOKS, TRAINER_FIRES, default_hook, is_default_hook

REQUIRED = [
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_optimizer_step",
    "on_after_setup",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_exception",
    "should_optimizer_step",
]


def test_every_hook_the_kernel_needs_is_declared_with_parameters():
    assert set(REQUIRED) <= set(HOOKS)
    for name, spec in HOOKS.items():
        assert spec.name == name
        assert spec.params, name
        assert all(p.isidentifier() for p in spec.params), name
        assert len(set(spec.params)) == len(spec.params), name
        assert spec.fires, name
    assert HOOKS["on_train_batch_end"].params == ("trainer", "module", "outputs", "batch",
                                                  "batch_idx")  # fmt: skip
    assert HOOKS["on_before_backward"].params == ("fabric", "trainer", "module", "loss")
    assert HOOKS["on_exception"].params == ("trainer", "module", "exception")
    assert HOOKS["should_optimizer_step"].returns  # a query says what its answer means
    assert not HOOKS["on_fit_start"].returns


def test_fired_sets_are_declared_hooks():
    assert set(HOOKS) >= FABRIC_FIRES
    assert set(HOOKS) == TRAINER_FIRES
    assert set(ALIASES.values()) <= {p for spec in HOOKS.values() for p in spec.params}


def test_the_module_docstring_places_every_hook_in_the_loop():
    doc = hooks.__doc__ or ""
    pseudocode = doc.split("::", 1)[1].split("In manual optimization")[0]
    for name in HOOKS:
        assert re.search(rf"^\s+{name}\b", pseudocode, re.MULTILINE), name
    # The nesting is right: batch hooks inside the epoch, the epoch inside fit.
    indent = {
        name: len(line) - len(line.lstrip())
        for line in pseudocode.splitlines()
        for name in HOOKS
        if line.strip().split(" ")[0] == name
    }
    assert indent["on_fit_start"] < indent["on_train_epoch_start"] < indent["on_train_batch_start"]
    assert indent["on_train_batch_start"] == indent["should_optimizer_step"]
    assert indent["should_optimizer_step"] < indent["on_before_backward"]
    assert indent["on_validation_start"] < indent["on_validation_batch_start"]


def test_the_module_docstring_has_the_stop_table():
    doc = hooks.__doc__ or ""
    table = doc.split("Which hooks still fire when training stops early or fails:")[1]
    for column in ("normal end", "``max_steps`` reached", "returns -1", "exception"):
        assert column in table
    assert re.search(r"^on_exception\s+no\s+no\s+no\s+yes", table, re.MULTILINE)


def test_default_hook_marks_functions_and_bound_methods():
    class Base:
        @default_hook
        def on_fit_start(self, trainer):
            pass

        def on_fit_end(self, trainer):
            pass

    base = Base()
    assert is_default_hook(Base.on_fit_start)
    assert is_default_hook(base.on_fit_start)
    assert not is_default_hook(base.on_fit_end)
    assert not is_default_hook(print)


def test_fabric_fires_its_hooks_with_the_declared_parameters():
    """Fabric's own calls match the catalogue, in the order of one optimization step."""
    fired: list[tuple[str, list[str]]] = []

    class Spy:
        pass

    for name in FABRIC_FIRES:

        def receive(name=name, **kwargs):
            fired.append((name, sorted(kwargs)))

        setattr(Spy, name, staticmethod(receive))

    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu", callbacks=[Spy()])
    model = torch.nn.Linear(2, 1)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    optimizer.zero_grad()
    fabric.backward(model(torch.ones(3, 2)).sum())
    optimizer.step()
    assert [name for name, _ in fired] == [
        "on_after_setup",
        "on_before_zero_grad",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_optimizer_step",
    ]
    for name, keywords in fired:
        assert keywords == sorted(HOOKS[name].params), name
