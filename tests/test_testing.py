"""loopkit.testing: deterministic helpers that leave global state alone, and a hook recorder."""

from __future__ import annotations

import sys
import tempfile

import pytest
import torch
from torch import nn

import loopkit
from loopkit import testing


def test_not_exported_by_import_loopkit() -> None:
    assert "testing" not in loopkit._EXPORTS and "testing" not in loopkit.__all__
    assert testing is sys.modules["loopkit.testing"]


def test_tiny_model_depends_on_the_seed_only_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = testing.tiny_model(), testing.tiny_model(), testing.tiny_model(seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG did not move
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)
    shaped = testing.tiny_model(in_features=3, hidden=5, out_features=2)
    assert shaped(torch.zeros(7, 3)).shape == (7, 2)


def test_tiny_module_holds_the_tiny_model_weights() -> None:
    module = testing.TinyModule(seed=4)
    reference = testing.tiny_model(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(module.net.parameters(), reference.parameters()))
    assert isinstance(module, loopkit.LoopModule)


def test_synthetic_data_is_reproducible_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    first, again = testing.synthetic_data(n=10), testing.synthetic_data(n=10)
    assert torch.equal(torch.rand(2), expected_next)
    assert torch.equal(first.tensors[0], again.tensors[0])
    assert torch.equal(first.tensors[1], again.tensors[1])
    assert not torch.equal(first.tensors[0], testing.synthetic_data(n=10, seed=1).tensors[0])
    batches = list(testing.synthetic_loader(n=10, batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.equal(batches[0][0], first.tensors[0][:4])  # in order


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: testing.tiny_model(hidden=0), "hidden=0: pass a positive int"),
        (lambda: testing.synthetic_data(n=-1), "n=-1: pass a positive int"),
        (lambda: testing.synthetic_loader(batch_size=True), "batch_size=True"),
        (lambda: testing.HookRecorder(only=["on_train_epoch_ends"]), "are not declared hooks"),
        (lambda: testing.HookRecorder(custom=["not a name"]), "identifier string"),
    ],
)
def test_bad_arguments(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_recorder_in_a_fabric_loop_with_a_custom_hook() -> None:
    recorder = testing.HookRecorder(custom=["on_my_event"])
    fabric = loopkit.Fabric(accelerator="cpu", callbacks=[recorder])
    net = testing.tiny_model()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    x, y = next(iter(testing.synthetic_loader()))
    fabric.backward(nn.functional.mse_loss(model(x), y))
    optimizer.step()
    optimizer.zero_grad()
    fabric.call("on_my_event", value=3)
    fabric.call("on_not_recorded")
    assert recorder.names == [
        "on_after_setup",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_optimizer_step",
        "on_before_zero_grad",
        "on_my_event",
    ]
    assert recorder.of("on_my_event") == [{"value": 3}]
    assert recorder.of("on_after_setup")[0]["module"] is net
    assert recorder.count("on_optimizer_step") == 1
    recorder.clear()
    assert recorder.calls == [] and repr(recorder) == "HookRecorder(0 call(s))"


def test_recorder_with_the_trainer_only_selected_hooks() -> None:
    recorder = testing.HookRecorder(only=["on_train_epoch_end", "on_validation_end"])
    trainer = loopkit.Trainer(
        max_epochs=2, callbacks=[recorder], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tempfile.mkdtemp(),
    )  # fmt: skip
    trainer.fit(testing.TinyModule(), testing.synthetic_loader(n=16), testing.synthetic_loader(n=8))
    assert recorder.names == ["on_validation_end", "on_train_epoch_end"] * 2
    assert all(kw["trainer"] is trainer for kw in recorder.of("on_train_epoch_end"))
