"""accumulate_grad_batches in loopkit.Trainer: weights, global_step, sync count, errors."""

from __future__ import annotations

import pytest
import torch
from _accumulation_sync import SyncCountingStrategy
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from loopkit.module import LoopModule
from loopkit.trainer import Trainer
from loopkit_accumulation import Accumulation

SAMPLES, BATCH = 28, 4  # 7 batches per epoch


def dataset() -> TensorDataset:
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(SAMPLES, 3, generator=gen), torch.randn(SAMPLES, 1, generator=gen)
    return TensorDataset(x, y)


def loader() -> DataLoader:
    return DataLoader(dataset(), batch_size=BATCH)


class Stream(IterableDataset):
    """The same batches with no length: the trainer finds the last one by reading ahead."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        data = dataset()
        for i in range(0, SAMPLES, BATCH):
            yield data[i : i + BATCH]


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))


def make_opt(params) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class Regressor(LoopModule):
    def __init__(self, automatic: bool = True) -> None:
        super().__init__()
        self.net = make_net()
        self.automatic_optimization = automatic
        self.steps_seen: list[int] = []

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.steps_seen.append(self.trainer.global_step)
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return make_opt(self.parameters())


def fit(module: LoopModule, data=None, **kwargs) -> Trainer:  # type: ignore[no-untyped-def]
    kwargs.setdefault("max_epochs", 2)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )
    trainer.fit(module, data if data is not None else loader())
    return trainer


def plain_loop(schedule: dict[int, int], epochs: int = 2) -> tuple[nn.Module, int]:
    """The documented behaviour by hand: mean gradient per window, step every N and at the end."""
    net = make_net()
    opt = make_opt(net.parameters())
    batches = [dataset()[i : i + BATCH] for i in range(0, SAMPLES, BATCH)]
    steps = 0
    for epoch in range(epochs):
        started = [k for k in schedule if k <= epoch]
        n = schedule[max(started)] if started else 1
        for batch_idx, (x, y) in enumerate(batches):
            start = batch_idx - batch_idx % n
            window = min(n, len(batches) - start)
            (nn.functional.mse_loss(net(x), y) / window).backward()
            if (batch_idx + 1) % n == 0 or batch_idx == len(batches) - 1:
                opt.step()
                opt.zero_grad()
                steps += 1
    return net, steps


def assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("n", [2, 3, 7])
def test_trainer_accumulation_matches_the_plain_loop(n: int) -> None:
    module = Regressor()
    trainer = fit(module, accumulate_grad_batches=n)
    reference, steps = plain_loop({0: n})
    assert_same(module.net, reference)
    assert trainer.global_step == steps == 2 * -(-7 // n)
    # global_step advances once per window: it is the number of windows finished so far.
    assert module.steps_seen[: n + 1] == [0] * n + [1]


def test_trainer_accumulation_schedule_by_epoch() -> None:
    module = Regressor()
    trainer = fit(module, accumulate_grad_batches={1: 3}, max_epochs=3)
    reference, steps = plain_loop({1: 3}, epochs=3)
    assert_same(module.net, reference)
    assert trainer.global_step == steps == 7 + 3 + 3


def test_trainer_accumulation_on_data_without_length() -> None:
    module = Regressor()
    trainer = fit(module, DataLoader(Stream(), batch_size=None), accumulate_grad_batches=3)
    reference, steps = plain_loop({0: 3})
    assert trainer.global_step == steps
    for p, q in zip(module.net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_manual_optimization_rejects_accumulation_and_points_to_the_pattern() -> None:
    class Manual(Regressor):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            raise AssertionError("must not run")

    message = r"accumulate_grad_batches=4.*automatic_optimization"
    with pytest.raises(ValueError, match=message) as err:
        fit(Manual(automatic=False), accumulate_grad_batches=4)
    assert "manual_backward" in str(err.value) and "zero_grad" in str(err.value)


def test_trainer_attaches_the_plugin_by_name() -> None:
    trainer = fit(Regressor(), accumulate_grad_batches={0: 2}, max_epochs=1)
    plugin = trainer.fabric.get_plugin("accumulation")
    assert isinstance(plugin, Accumulation)
    assert plugin.accumulate_grad_batches == {0: 2}


# -- one gradient synchronisation per optimizer step -------------------------------------------


@pytest.mark.parametrize(("n", "steps"), [(1, 7), (4, 2)])
def test_one_gradient_sync_per_optimizer_step(n: int, steps: int) -> None:
    strategy = SyncCountingStrategy()
    module = Regressor()
    trainer = fit(module, strategy=strategy, accumulate_grad_batches=n, max_epochs=1)
    assert trainer.global_step == steps
    assert strategy.backwards == 7
    assert strategy.syncs_per_step == [1] * steps
    assert strategy.unblocked_backwards == steps
