"""Resuming from a checkpoint ends bitwise identical to the run that was never interrupted.

Each test fits a reference run, then the same run again while saving a checkpoint at one moment
(checkpointing must not change what it trains), then a fresh module, trainer and dataloader
resumed from that checkpoint: its final weights and optimizer state must equal the reference's
with ``torch.equal``. The moments cover every place a checkpoint can be taken from: after a
batch (validation still to come), after validation in the middle of an epoch, at an epoch's end
(the last batch, with the epoch's validation), after fit returned; data of every kind the
resume handles differently; and the state of plugins (accumulation, schedulers, grad scaler).
"""

from __future__ import annotations

import random
import sys
import typing as t
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

import loopkit
from loopkit import Callback, ModelCheckpoint
from loopkit.trainer_state import SAVE_PRIORITY

sys.path.insert(0, str(Path(__file__).parent))

import _resume_job as job

# -- helpers --------------------------------------------------------------------------------------


def equal_states(a: t.Any, b: t.Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(equal_states(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_states(x, y) for x, y in zip(a, b))
    return bool(a == b)


def save_when(
    trainer: loopkit.Trainer, hook: str, when: t.Callable[[t.Any], bool], path: Path
) -> None:
    """Save a checkpoint at ``hook`` when ``when(trainer)``, after every other receiver."""

    def save(trainer: t.Any) -> None:
        if when(trainer) and not path.exists():
            trainer.save_checkpoint(path)

    trainer.fabric.bus.connect(save, hook, priority=SAVE_PRIORITY - 1)


class Run(t.NamedTuple):
    module: nn.Module
    trainer: loopkit.Trainer
    state: dict[str, t.Any]


def fit(
    root: Path,
    make_module: t.Callable[[], nn.Module] = job.Net,
    make_data: t.Callable[[], t.Any] = job.loaders,
    *,
    ckpt_path: t.Any = None,
    save: tuple[str, t.Callable[[t.Any], bool], Path] | None = None,
    seed: int = 7,
    make_callbacks: t.Callable[[], list[t.Any]] = lambda: [job.Counter()],
    **trainer_kwargs: t.Any,
) -> Run:
    job.seed_all(seed)
    module = make_module()
    data = make_data()
    train, val = data if isinstance(data, tuple) else (data, None)
    trainer = job.make_trainer(root, callbacks=make_callbacks(), **trainer_kwargs)
    if save is not None:
        save_when(trainer, *save)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return Run(module, trainer, job.final_state(module, trainer))


def check_resume(
    tmp_path: Path,
    hook: str,
    when: t.Callable[[t.Any], bool],
    make_module: t.Callable[[], nn.Module] = job.Net,
    make_data: t.Callable[[], t.Any] = job.loaders,
    **trainer_kwargs: t.Any,
) -> tuple[Run, Run, dict[str, t.Any]]:
    """Reference run, run saving at (hook, when), run resumed from that save: all equal."""
    ckpt = tmp_path / "moment.ckpt"
    reference = fit(tmp_path / "a", make_module, make_data, **trainer_kwargs)
    saving = fit(tmp_path / "b", make_module, make_data, save=(hook, when, ckpt), **trainer_kwargs)
    assert ckpt.exists(), f"no checkpoint was taken at {hook}"
    assert equal_states(saving.state, reference.state), "checkpointing changed the training"
    # The same folder: a resumed run continues the ModelCheckpoint's files and ranking.
    resumed = fit(tmp_path / "b", make_module, make_data, ckpt_path=ckpt, seed=99, **trainer_kwargs)
    assert equal_states(resumed.state["module"], reference.state["module"])
    assert equal_states(resumed.state["optimizers"], reference.state["optimizers"])
    assert resumed.state["callbacks"] == reference.state["callbacks"]
    assert resumed.trainer.global_step == reference.trainer.global_step
    assert resumed.trainer.current_epoch == reference.trainer.current_epoch
    return reference, resumed, torch.load(ckpt, weights_only=True)


def at_batch(n: int) -> t.Callable[[t.Any], bool]:
    """True during the hook of total batch ``n`` (0-based): total_batches counts it already."""
    return lambda trainer: trainer.progress.total_batches == n + 1


# -- the moments a checkpoint is taken at ---------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "batch", "stage"),
    [
        ("on_train_batch_end", 0, "batch_end"),  # the very first batch
        ("on_train_batch_end", 8, "batch_end"),  # mid-epoch, validation due right after it
        ("on_train_batch_end", 9, "batch_end"),  # mid-epoch, nothing due
        ("on_train_batch_end", 11, "batch_end"),  # the epoch's last batch: validation, epoch end
        ("on_validation_end", 8, "validated"),  # validation in the middle of an epoch
        ("on_validation_end", 11, "validated"),  # the epoch's validation, epoch end to come
        ("on_train_epoch_end", 11, "epoch_end"),  # between epochs
        ("on_train_epoch_start", 12, "epoch_start"),  # the next epoch, before its first batch
    ],
)
def test_resume_from_each_moment_is_exact(
    tmp_path: Path, hook: str, batch: int, stage: str
) -> None:
    if hook == "on_train_epoch_start":
        when = lambda tr: tr.progress.total_batches == batch  # noqa: E731 - not yet counted
    else:
        when = at_batch(batch)
    reference, resumed, ckpt = check_resume(tmp_path, hook, when)
    assert ckpt["loops"]["stage"] == stage
    # Epoch-level metrics (train_loss on_epoch) were aggregated across the interruption.
    for key in ("train_loss_epoch", "val_loss"):
        assert torch.equal(
            resumed.trainer.callback_metrics[key], reference.trainer.callback_metrics[key]
        ), key


def test_resume_after_fit_returned_continues_like_one_longer_run(tmp_path: Path) -> None:
    reference = fit(tmp_path / "a")
    short = fit(tmp_path / "b", max_epochs=2)
    short.trainer.save_checkpoint(tmp_path / "after.ckpt")
    assert torch.load(tmp_path / "after.ckpt")["loops"]["stage"] == "ended"
    resumed = fit(tmp_path / "b", ckpt_path=tmp_path / "after.ckpt", seed=3)
    assert equal_states(resumed.state, reference.state)


def test_checkpoints_every_step_change_nothing(tmp_path: Path) -> None:
    plain = fit(tmp_path / "a", enable_checkpointing=False)
    saving = fit(
        tmp_path / "b",
        make_callbacks=lambda: [
            job.Counter(),
            ModelCheckpoint(every_n_train_steps=1, save_last=True),
            ModelCheckpoint(monitor="val_loss", save_top_k=2, filename="best-{step}"),
        ],
    )
    assert len(list((tmp_path / "b" / "checkpoints").glob("*.ckpt"))) == 4
    assert equal_states(plain.state, saving.state)


def test_resumed_epoch_loads_only_the_batches_it_trains(tmp_path: Path) -> None:
    loaded: list[int] = []

    class Recording(TensorDataset):
        def __getitem__(self, i: int) -> t.Any:
            loaded.append(int(i))
            return super().__getitem__(i)

    def data() -> DataLoader[t.Any]:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(24, 4, generator=g), torch.randn(24, 1, generator=g)
        return DataLoader(Recording(x, y), batch_size=4, shuffle=True)

    fit(tmp_path / "a", make_data=data, max_epochs=2, val_check_interval=None)
    original = list(loaded)
    loaded.clear()
    ckpt = tmp_path / "mid.ckpt"
    fit(
        tmp_path / "b", make_data=data, max_epochs=1, val_check_interval=None,
        save=("on_train_batch_end", at_batch(3), ckpt),
    )  # fmt: skip
    loaded.clear()
    fit(tmp_path / "b", make_data=data, max_epochs=2, val_check_interval=None, ckpt_path=ckpt)
    # Batches 0-3 of epoch 0 are not read again; 4, 5 and all of epoch 1 are, in their order.
    assert loaded == original[16:]


# -- data of every kind ---------------------------------------------------------------------------


class Counting(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """An iterable dataset without state: a resumed epoch reads and drops what was trained."""

    def __iter__(self) -> t.Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(5)
        for _ in range(6):
            x = torch.randn(4, 4, generator=g)
            yield x, x.sum(1, keepdim=True)


class Positioned:
    """A loader that keeps its own position (``state_dict``): a resumed epoch continues it."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.batches = [(x, x.sum(1, keepdim=True)) for x in torch.randn(6, 4, 4, generator=g)]
        self.position = 0
        self.restored = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> t.Iterator[t.Any]:
        start, self.restored = self.restored, 0
        for i in range(start, len(self.batches)):
            self.position = i + 1
            yield self.batches[i]
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.restored = state["position"]


def _tensors(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


DATA: dict[str, t.Callable[[], t.Any]] = {
    "own_generator": lambda: DataLoader(
        _tensors(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
    ),
    "distributed_sampler": lambda: DataLoader(
        _tensors(),
        batch_size=4,
        sampler=DistributedSampler(_tensors(), num_replicas=1, rank=0, shuffle=True, seed=5),
    ),
    "sampler_without_batching": lambda: DataLoader(_tensors(), batch_size=None, shuffle=True),
    "iterable_dataset": lambda: DataLoader(Counting(), batch_size=None),
    "plain_list": lambda: [
        (x, x.sum(1, keepdim=True))
        for x in torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(1))
    ],
    "stateful_loader": Positioned,
}


@pytest.mark.parametrize("kind", sorted(DATA))
def test_resume_mid_epoch_with_any_data(tmp_path: Path, kind: str) -> None:
    check_resume(
        tmp_path, "on_train_batch_end", at_batch(8), make_data=DATA[kind], max_epochs=3,
        val_check_interval=None,
    )  # fmt: skip


@pytest.mark.slow
def test_resume_mid_epoch_with_worker_processes(tmp_path: Path) -> None:
    def data() -> DataLoader[t.Any]:
        return DataLoader(
            _tensors(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True
        )

    check_resume(
        tmp_path, "on_train_batch_end", at_batch(8), make_data=data, max_epochs=3,
        val_check_interval=None,
    )  # fmt: skip


# -- optimization state ---------------------------------------------------------------------------


class ManualAccumulating(loopkit.LoopModule):
    """Manual optimization stepping every second batch: gradients span two batches."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: t.Any, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        self.manual_backward(nn.functional.mse_loss(self.layer(x), y) / 2)
        if batch_idx % 2 == 1:
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self) -> t.Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_manual_optimization_resumes_with_the_open_window_gradients(tmp_path: Path) -> None:
    _, _, ckpt = check_resume(
        tmp_path, "on_train_batch_end", at_batch(6), make_module=ManualAccumulating,
        make_data=DATA["own_generator"], max_epochs=2, val_check_interval=None,
    )  # fmt: skip
    assert set(ckpt["gradients"]) == {"layer.weight", "layer.bias"}


def test_accumulation_window_open_at_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_accumulation")
    # Validation after batch 4 falls inside the window of batches 3-5: the save holds its
    # gradients and the resumed run steps with them.
    _, _, ckpt = check_resume(
        tmp_path, "on_validation_end", at_batch(4), accumulate_grad_batches=3,
        val_check_interval=5, max_epochs=2,
    )  # fmt: skip
    assert ckpt["loops"]["accumulated"] == [True]
    assert "gradients" in ckpt


class Scheduled(job.Net):
    def configure_optimizers(self) -> t.Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "step"}}


def test_lr_scheduler_state_resumes(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_schedulers")
    reference, resumed, ckpt = check_resume(
        tmp_path, "on_train_batch_end", at_batch(9), make_module=Scheduled
    )
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 10
    assert "schedulers" in ckpt["plugins"]
    lrs = [tr.optimizers[0].param_groups[0]["lr"] for tr in (reference.trainer, resumed.trainer)]
    assert lrs[0] == lrs[1] == 0.1 * 0.5**6


def test_grad_scaler_state_resumes(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_precision")
    _, resumed, ckpt = check_resume(
        tmp_path, "on_train_batch_end", at_batch(9), precision="16-mixed"
    )
    assert set(ckpt["precision"]) >= {"scale", "_growth_tracker"}
    assert resumed.trainer.precision.scaler.get_scale() == float(ckpt["precision"]["scale"])


# -- stopping --------------------------------------------------------------------------------


class StopAtEpoch(Callback):
    """Sets should_stop after the validation at the end of epoch 1 (as early stopping would)."""

    def on_validation_end(self, trainer: t.Any) -> None:
        if trainer.current_epoch == 1 and trainer.is_last_batch:
            trainer.should_stop = True


def test_a_stop_requested_before_the_checkpoint_still_stops(tmp_path: Path) -> None:
    reference, resumed, ckpt = check_resume(
        tmp_path,
        "on_validation_end",
        at_batch(11),
        make_callbacks=lambda: [job.Counter(), StopAtEpoch()],
    )
    assert ckpt["loops"]["should_stop"] is True
    assert reference.trainer.global_step == resumed.trainer.global_step == 12


def test_python_and_numpy_generators_continue_after_resume(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    draws: dict[str, list[float]] = {}

    class Draw(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_train_batch_start(self) -> None:
            draws.setdefault(self.name, []).append(random.random() + float(np.random.rand()))

    ckpt = tmp_path / "x.ckpt"
    fit(
        tmp_path, make_callbacks=lambda: [Draw("a")], save=("on_train_batch_end", at_batch(7), ckpt)
    )
    fit(tmp_path, make_callbacks=lambda: [Draw("b")], ckpt_path=ckpt, seed=1)
    assert draws["b"] == draws["a"][8:]


def test_the_dataloader_gets_its_own_sampler_back(tmp_path: Path) -> None:
    loader = DATA["own_generator"]()
    batch_sampler = loader.batch_sampler
    fit(tmp_path, make_data=lambda: loader, max_epochs=1, val_check_interval=None)
    assert loader.batch_sampler is batch_sampler

    class Failing(job.Net):
        def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 2:
                raise KeyError("boom")
            return super().training_step(batch, batch_idx)

    with pytest.raises(KeyError, match="boom"):
        fit(tmp_path, Failing, lambda: loader, max_epochs=1, val_check_interval=None)
    assert loader.batch_sampler is batch_sampler
