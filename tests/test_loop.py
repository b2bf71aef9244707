"""FitLoop on its own (no torch): epochs, batches, validation schedule, stop conditions."""

from __future__ import annotations

import typing as t

import pytest
from _trainer_util import Regressor, data, trainer

from loopkit.loop import FitLoop, Progress, batches


class Calls:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.answers: dict[str, t.Any] = {}

    def __call__(self, name: str, **kwargs: t.Any) -> list[tuple[object, t.Any]]:
        self.seen.append(name)
        if name in self.answers:
            return [(self, self.answers[name](**kwargs))]
        return []


def stepping(progress: Progress, log: list[tuple[int, int]]) -> t.Callable[[t.Any, int], None]:
    def step(batch: t.Any, batch_idx: int) -> None:
        log.append((progress.epoch, batch_idx))
        progress.stepped = True

    return step


def test_epochs_batches_and_counters() -> None:
    calls, log = Calls(), []
    loop = FitLoop(calls, max_epochs=2)
    loop.run(range(3), stepping(loop.progress, log), num_batches=3)
    assert log == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert loop.progress.epoch == 2 and loop.progress.global_step == 6
    assert calls.seen[:3] == ["on_train_start", "on_train_epoch_start", "on_train_batch_start"]
    assert calls.seen[-2:] == ["on_train_epoch_end", "on_train_end"]


def test_max_steps_and_only_stepping_batches_count() -> None:
    loop = FitLoop(Calls(), max_steps=3)
    p, seen = loop.progress, []

    def every_other(batch: t.Any, batch_idx: int) -> None:
        seen.append(batch_idx)
        p.stepped = batch_idx % 2 == 1

    loop.run(range(4), every_other, num_batches=4)
    assert p.global_step == 3 and p.epoch == 2 and p.total_batches == 6
    assert seen == [0, 1, 2, 3, 0, 1]


def test_validation_schedules() -> None:
    def when(**kwargs: t.Any) -> list[tuple[int, int]]:
        loop = FitLoop(Calls(), max_epochs=3, **kwargs)
        at: list[tuple[int, int]] = []
        loop.run(
            range(4),
            stepping(loop.progress, []),
            lambda: at.append((loop.progress.epoch, loop.progress.batch_idx)),
            num_batches=4,
        )
        return at

    assert when() == [(0, 3), (1, 3), (2, 3)]
    assert when(val_every_n_batches=2) == [(0, 1), (0, 3), (1, 1), (1, 3), (2, 1), (2, 3)]
    assert when(val_every_n_epochs=2) == [(1, 3)]
    # counting across epochs: every 3 batches of the run
    assert when(val_every_n_batches=3, val_every_n_epochs=None) == [(0, 2), (1, 1), (2, 0), (2, 3)]


def test_should_stop_validates_then_ends() -> None:
    loop = FitLoop(Calls(), max_epochs=5)
    p, vals = loop.progress, []

    def step(batch: t.Any, batch_idx: int) -> None:
        p.stepped = True
        p.should_stop = batch_idx == 1

    loop.run(range(4), step, lambda: vals.append(p.batch_idx), num_batches=4)
    assert vals == [1] and p.epoch == 1 and p.global_step == 2


def test_on_train_batch_start_minus_one() -> None:
    calls = Calls()
    calls.answers["on_train_batch_start"] = lambda batch_idx, **_: -1 if batch_idx == 1 else None
    loop = FitLoop(calls, max_epochs=2)
    log: list[tuple[int, int]] = []
    loop.run(range(3), stepping(loop.progress, log), num_batches=3)
    assert log == [(0, 0), (1, 0)]


def test_batches_know_the_last_one_with_or_without_length() -> None:
    assert list(batches("abc", 3)) == [(0, "a", False), (1, "b", False), (2, "c", True)]
    assert list(batches("abcd", 2)) == [(0, "a", False), (1, "b", True)]
    assert list(batches(iter("abc"), float("inf"))) == [
        (0, "a", False), (1, "b", False), (2, "c", True),
    ]  # fmt: skip
    assert list(batches(iter(""), float("inf"))) == []


def test_no_stop_condition_is_an_error() -> None:
    with pytest.raises(ValueError, match="neither max_epochs nor max_steps"):
        FitLoop(Calls())


def test_max_steps_never_reached_stops_with_a_warning() -> None:
    loop = FitLoop(Calls(), max_steps=10)
    with pytest.warns(UserWarning, match="took no optimizer step"):
        loop.run(range(2), lambda b, i: None, num_batches=2)
    assert loop.progress.epoch == 1


def test_progress_state_round_trip() -> None:
    p = Progress(epoch=3, global_step=40, batch_idx=5, total_batches=41)
    q = Progress()
    q.load_state_dict(p.state_dict())
    assert q.state_dict() == p.state_dict()


# -- the same schedules through the Trainer's arguments ---------------------------------------


class Counting(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.val_at: list[tuple[int, int]] = []

    def validation_step(self, batch: t.Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_at.append((self.trainer.current_epoch, self.trainer.progress.batch_idx))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [(0, 3), (1, 3)]),
        ({"val_check_interval": 0.5}, [(0, 1), (0, 3), (1, 1), (1, 3)]),
        ({"val_check_interval": 3}, [(0, 2), (1, 2)]),
        ({"val_check_interval": 3, "check_val_every_n_epoch": None}, [(0, 2), (1, 1)]),
        ({"check_val_every_n_epoch": 2}, [(1, 3)]),
        ({"limit_val_batches": 0}, []),
    ],
)
def test_trainer_validation_schedule(kwargs: dict[str, t.Any], expected: list[t.Any]) -> None:
    model = Counting()
    trainer(max_epochs=2, **kwargs).fit(model, data(n=32, batch_size=8), data(n=16))
    assert model.val_at == expected


def test_limit_val_batches_and_bad_interval() -> None:
    seen: list[int] = []

    class M(Regressor):
        def validation_step(self, batch: t.Any, batch_idx: int) -> None:
            seen.append(batch_idx)

    tr = trainer(max_epochs=1, limit_val_batches=0.5)
    tr.fit(M(), data(n=16), data(n=32, batch_size=8))
    assert seen == [0, 1] and tr.num_val_batches == [2]
    with pytest.raises(ValueError, match="more than the 2 training batches"):
        trainer(max_epochs=1, val_check_interval=5).fit(M(), data(n=16), data(n=16))


def test_each_hook_sees_where_the_loop_stands() -> None:
    # A checkpoint taken from a hook records progress.stage and progress.batches_done.
    seen: list[tuple[str, str, int]] = []
    progress = Progress()

    def call(name: str, **kwargs: t.Any) -> list[tuple[object, t.Any]]:
        seen.append((name, progress.stage, progress.batches_done))
        return []

    loop = FitLoop(call, progress, max_epochs=1)
    loop.run(range(2), stepping(progress, []), num_batches=2)
    assert seen == [
        ("on_train_start", "idle", 0),
        ("on_train_epoch_start", "epoch_start", 0),
        ("on_train_batch_start", "batch", 0),
        ("on_train_batch_end", "batch_end", 1),
        ("on_train_batch_start", "batch", 1),
        ("on_train_batch_end", "batch_end", 2),
        ("on_train_epoch_end", "epoch_end", 2),
        ("on_train_end", "ended", 2),
    ]
    assert "stage" not in progress.state_dict()
