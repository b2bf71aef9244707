"""Accumulation windows, and the Fabric-loop form against plain PyTorch loops."""

from __future__ import annotations

import pytest
import torch
from _accumulation_sync import SyncCountingStrategy
from torch import nn

from loopkit import Fabric, registry
from loopkit_accumulation import Accumulation


def test_windows_step_every_n_and_on_the_last_batch() -> None:
    acc = Accumulation(3)
    windows = [acc.window(i, 7) for i in range(7)]
    assert [w.steps for w in windows] == [False, False, True] * 2 + [True]
    assert [w.size for w in windows] == [3] * 6 + [1]  # the last window holds one batch
    assert all(w.rescale is None for w in windows)
    # Unknown length: the short last window is only known when it ends, and then rescaled.
    unknown = [acc.window(i, None, is_last_batch=i == 6) for i in range(7)]
    assert [w.steps for w in unknown] == [w.steps for w in windows]
    assert [w.size for w in unknown] == [3] * 7
    assert unknown[-1].rescale == 3.0
    assert acc.window(7, float("inf")).size == 3


def test_schedule_applies_from_its_epoch_on() -> None:
    acc = Accumulation({2: 4, 5: 2})
    assert [acc.factor(e) for e in range(7)] == [1, 1, 4, 4, 4, 2, 2]
    assert acc.window(3, 10, epoch=2).steps
    assert acc.window(3, 10, epoch=1).size == 1


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (0, "at least 1"),
        (-2, "at least 1"),
        (True, "a bool"),
        ("4", "got a str"),
        ({}, "schedule is empty"),
        ({-1: 2}, "key -1 is not a 0-based epoch"),
        ({0: 0}, "epoch 0 maps to 0"),
        ({0: 2.5}, "epoch 0 maps to 2.5"),
    ],
)
def test_bad_accumulate_grad_batches_is_a_clear_error(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=rf"accumulate_grad_batches={value!r}.*{match}"):
        Accumulation(value)  # type: ignore[arg-type]


def test_registry_creates_it_by_name() -> None:
    acc = registry().create("subscriber", "accumulation", accumulate_grad_batches={0: 2})
    assert isinstance(acc, Accumulation)
    assert acc.accumulate_grad_batches == {0: 2}


# -- the Fabric-loop form against plain loops -------------------------------------------------

BATCHES = 7


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen))
        for _ in range(BATCHES)
    ]


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def plain_loop(n: int, last_window_divisor: str = "size", epochs: int = 2) -> nn.Module:
    """What the documents describe: scale each loss by 1/N, step every N and at the end."""
    model, opt = make_model()
    data = batches()
    for _ in range(epochs):
        for batch_idx, (x, y) in enumerate(data):
            start = batch_idx - batch_idx % n
            size = min(n, len(data) - start) if last_window_divisor == "size" else n
            loss = nn.functional.mse_loss(model(x), y) / size
            loss.backward()
            if (batch_idx + 1) % n == 0 or batch_idx == len(data) - 1:
                opt.step()
                opt.zero_grad()
    return model


def fabric_loop(n: int, known_length: bool = True, strategy: object = None, epochs: int = 2):
    raw, opt = make_model()
    acc = Accumulation(n)
    fabric = Fabric(accelerator="cpu", plugins=[acc], strategy=strategy or "auto")
    model, opt = fabric.setup(raw, opt)
    data = batches()
    steps = 0
    for _ in range(epochs):
        for batch_idx, (x, y) in enumerate(data):
            is_last = batch_idx == len(data) - 1
            length = len(data) if known_length else None
            with acc(model, batch_idx, length, is_last_batch=is_last) as should_step:
                fabric.backward(nn.functional.mse_loss(model(x), y))
            if should_step:
                opt.step()
                opt.zero_grad()
                steps += 1
    return raw, steps


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("n", [1, 3, 7])
def test_fabric_loop_matches_the_plain_loop(n: int) -> None:
    model, steps = fabric_loop(n)
    assert_same(model, plain_loop(n))
    assert steps == 2 * -(-BATCHES // n)


def test_short_last_window_is_a_mean_not_divided_by_n() -> None:
    model, _ = fabric_loop(3)
    lightning_like = plain_loop(3, last_window_divisor="n")
    assert not torch.equal(model[0].weight, lightning_like[0].weight)


def test_unknown_length_rescales_the_short_last_window() -> None:
    model, steps = fabric_loop(3, known_length=False)
    assert steps == 6
    reference = plain_loop(3)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_helper_errors() -> None:
    acc = Accumulation(2)
    raw, _ = make_model()
    with pytest.raises(RuntimeError, match="not attached to a Fabric"), acc(raw, 0):
        pass
    fabric = Fabric(accelerator="cpu", plugins=[acc])
    with pytest.raises(TypeError, match=r"needs the module.*got Sequential"), acc(raw, 0):
        pass
    model = fabric.setup(raw)
    with acc(model, 0) as should_step:
        assert should_step is False


# -- gradient synchronisation, counted --------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_one_gradient_sync_per_step(n: int) -> None:
    strategy = SyncCountingStrategy()
    model, steps = fabric_loop(n, strategy=strategy, epochs=1)
    # 7 batches: with N=4 windows of 4 and 3 batches; with N=1, one window per batch.
    assert strategy.syncs_per_step == [1] * steps
    assert steps == -(-BATCHES // n)
    assert strategy.unblocked_backwards == steps
    assert_same(model, plain_loop(n, epochs=1))
