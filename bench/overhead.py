"""What a loopkit Fabric loop costs over the same loop written in plain PyTorch.

Run: ``.venv/bin/python bench/overhead.py``. One tiny model (MLP 32-64-1, batch 32, SGD, one
torch thread) is trained for ``--steps`` steps by each loop in :data:`LOOPS`. The loops are timed
in rounds, interleaved in this one process pinned to one CPU: within a round every loop runs
``--chunk`` steps in turn until each has run ``--steps``, in an order shuffled at every turn, so
machine noise hits all of them alike. Each loop's figure is the median over rounds of its round
time divided by the raw loop's time in the same round; the ratio of the best rounds is printed
beside it.

Rows:

``raw``               the plain PyTorch loop (the denominator)
``raw (control)``     the same plain loop again: its ratio is the noise of this run (a run whose
                      control is far from 1.00x measured a busy machine; run it again)
``fabric``            ``fabric.setup``, ``setup_dataloaders``, ``fabric.backward``: nothing else
``fabric+callbacks``  the same, firing 5 callbacks at 4 hook points per step with ``fabric.call``
``trainer``           ``loopkit.Trainer.fit`` with automatic optimization (no logger, no
                      checkpointing, no progress bar); it runs in a worker thread that the
                      data hands back to the timer after each chunk
``lightning*``        the same two loops on Lightning Fabric, only when ``lightning`` is
                      installed (it is never a dependency of loopkit)

Targets: ``fabric`` at most 1.03x raw, ``fabric+callbacks`` at most 1.06x raw, ``trainer`` at
most 1.10x raw.

To add a row (a ``Trainer`` loop, say), write a function taking ``(steps, batches)`` that builds
its model from :func:`make_model` and returns a callable ``run(n)`` that trains the next ``n`` of
those ``steps`` steps, then add it to :data:`LOOPS` (and to :data:`TARGETS` if it has one).
"""

from __future__ import annotations

import argparse
import collections.abc as c
import importlib.util
import itertools
import os
import random
import statistics
import sys
import time
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from loopkit import Fabric

Batch = tuple[torch.Tensor, torch.Tensor]
#: A loop builder: (steps, batches) -> ``run(n)``, which trains the next ``n`` of ``steps`` steps
#: (and may return the seconds it took, when it must time itself).
Runner = c.Callable[[int], float | None]
LoopBuilder = c.Callable[[int, list[Batch]], Runner]

LR = 0.01
HOOK_POINTS = ("on_train_batch_start", "on_after_forward", "on_before_step", "on_train_batch_end")


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=LR)


def make_batches(n: int = 64) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 32, generator=gen), torch.randn(32, 1, generator=gen)) for _ in range(n)
    ]


def _cycle(batches: list[Batch], steps: int) -> list[Batch]:
    return [batches[i % len(batches)] for i in range(steps)]


# -- the loops --------------------------------------------------------------------------------


def raw_loop(steps: int, batches: list[Batch]) -> Runner:
    model, optimizer = make_model()
    data = iter(_cycle(batches, steps))
    mse = nn.functional.mse_loss

    def run(n: int) -> None:
        for x, y in itertools.islice(data, n):
            loss = mse(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def fabric_loop(steps: int, batches: list[Batch]) -> Runner:
    fabric = Fabric(accelerator="cpu")
    model, optimizer = fabric.setup(*make_model())
    data = iter(fabric.setup_dataloaders(_cycle(batches, steps)))
    mse = nn.functional.mse_loss

    def run(n: int) -> None:
        for x, y in itertools.islice(data, n):
            loss = mse(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()

    return run


class _Counter:
    """A callback that takes nothing: counts the hooks it sees."""

    def __init__(self) -> None:
        self.calls = 0

    def on_train_batch_start(self) -> None:
        self.calls += 1

    def on_after_forward(self) -> None:
        self.calls += 1

    def on_before_step(self) -> None:
        self.calls += 1

    def on_train_batch_end(self) -> None:
        self.calls += 1


class _Reader:
    """A callback that names some of the arguments each hook is fired with."""

    def __init__(self) -> None:
        self.last: object = None

    def on_train_batch_start(self, batch_idx: int) -> None:
        self.last = batch_idx

    def on_after_forward(self, loss: torch.Tensor) -> None:
        self.last = loss

    def on_before_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.last = optimizer

    def on_train_batch_end(self, batch_idx: int, loss: torch.Tensor) -> None:
        self.last = loss


def _callbacks() -> list[object]:
    return [_Counter(), _Reader(), _Counter(), _Reader(), _Counter()]


def _fabric_callbacks_loop(fabric_cls: t.Any, wrap_data: bool = True) -> LoopBuilder:
    def build(steps: int, batches: list[Batch]) -> Runner:
        fabric = fabric_cls(accelerator="cpu", devices=1, callbacks=_callbacks())
        model, optimizer = fabric.setup(*make_model())
        batch_list = _cycle(batches, steps)
        data = enumerate(fabric.setup_dataloaders(batch_list) if wrap_data else batch_list)
        mse = nn.functional.mse_loss
        call = fabric.call
        start, after_forward, before_step, end = HOOK_POINTS

        def run(n: int) -> None:
            for batch_idx, batch in itertools.islice(data, n):
                call(start, batch=batch, batch_idx=batch_idx)
                x, y = batch
                loss = mse(model(x), y)
                call(after_forward, loss=loss)
                optimizer.zero_grad()
                fabric.backward(loss)
                call(before_step, optimizer=optimizer)
                optimizer.step()
                call(end, batch_idx=batch_idx, loss=loss)

        return run

    return build


def trainer_loop(steps: int, batches: list[Batch]) -> Runner:
    import threading

    from loopkit import LoopModule, Trainer

    model, optimizer = make_model()
    mse = nn.functional.mse_loss

    class Module(LoopModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return mse(self.model(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer

    # fit() runs to the end, so it runs in a worker thread; the data hands control back to the
    # timer once the batches run(n) granted are trained (one hand-off per chunk). The worker
    # times its own share of each chunk, so the OS's thread wake-up latency is not counted.
    granted, go, done = [0], threading.Semaphore(0), threading.Semaphore(0)
    clock, resumed, took = time.perf_counter, [0.0], [0.0]

    def pause() -> None:
        took[0] = clock() - resumed[0]
        done.release()

    class Paced:
        def __len__(self) -> int:
            return steps

        def __iter__(self) -> c.Iterator[Batch]:
            for batch in _cycle(batches, steps):
                if granted[0] == 0:
                    pause()
                    go.acquire()
                    resumed[0] = clock()
                granted[0] -= 1
                yield batch

    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = Module()
    threads = torch.get_num_threads()

    def fit() -> None:
        resumed[0] = clock()
        torch.set_num_threads(threads)  # per thread: a new thread starts with torch's default
        trainer.fit(module, Paced())
        pause()

    worker = threading.Thread(target=fit, daemon=True)

    def run(n: int) -> float:
        granted[0] = n
        if worker.is_alive():
            go.release()
        else:
            worker.start()
        done.acquire()
        return took[0]

    return run


def _lightning_loops() -> dict[str, LoopBuilder]:
    if importlib.util.find_spec("lightning") is None:
        return {}
    from lightning.fabric import Fabric as LightningFabric

    # Lightning's setup_dataloaders takes DataLoaders only, whose own per-batch cost would be
    # counted against it; on one CPU its wrapper would do nothing to the batches anyway, so its
    # loops iterate the prepared batches directly.
    def plain(steps: int, batches: list[Batch]) -> Runner:
        fabric = LightningFabric(accelerator="cpu", devices=1)
        model, optimizer = fabric.setup(*make_model())
        data = iter(_cycle(batches, steps))
        mse = nn.functional.mse_loss

        def run(n: int) -> None:
            for x, y in itertools.islice(data, n):
                loss = mse(model(x), y)
                optimizer.zero_grad()
                fabric.backward(loss)
                optimizer.step()

        return run

    return {
        "lightning": plain,
        "lightning+callbacks": _fabric_callbacks_loop(LightningFabric, wrap_data=False),
    }


#: Every loop timed, by row name. ``raw`` must stay first: it is the denominator.
LOOPS: dict[str, LoopBuilder] = {
    "raw": raw_loop,
    "raw (control)": raw_loop,
    "fabric": fabric_loop,
    "fabric+callbacks": _fabric_callbacks_loop(Fabric),
    "trainer": trainer_loop,
}

#: Row name -> the ratio to raw it must not exceed.
TARGETS: dict[str, float] = {"fabric": 1.03, "fabric+callbacks": 1.06, "trainer": 1.10}


# -- timing ------------------------------------------------------------------------------------


def measure(
    loops: c.Mapping[str, LoopBuilder], steps: int, rounds: int, chunk: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per round for every loop: chunks interleaved, in a new order every turn.

    The order is shuffled (with a fixed seed) for every turn of chunks rather than rotated: what
    runs just before a loop can speed it up or slow it down (the trainer row hands control
    between threads), and a fixed cyclic order would always give the same loop that neighbour.
    """
    batches = make_batches()
    names = list(loops)
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    shuffle = random.Random(0).shuffle
    for r in range(warmup + rounds):
        runners = {name: loops[name](steps, batches) for name in names}  # fresh models
        spent = dict.fromkeys(names, 0.0)
        order = list(names)
        for done in range(0, steps, chunk):
            n = min(chunk, steps - done)
            shuffle(order)
            for name in order:
                start = clock()
                took = runners[name](n)  # a runner may time itself (the trainer's worker)
                spent[name] += clock() - start if took is None else took
        if r >= warmup:
            for name in names:
                times[name].append(spent[name])
    return times


def report(times: dict[str, list[float]], steps: int) -> bool:
    raw = times["raw"]
    ok = True
    print(f"{'loop':<22}{'us/step':>9}{'median ratio':>14}{'min ratio':>11}{'target':>9}")
    for name, samples in times.items():
        ratio = statistics.median(s / r for s, r in zip(samples, raw))
        best = min(samples) / min(raw)
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            met = ratio <= target
            ok &= met
            verdict = f"{target:8.2f}x {'met' if met else 'MISSED'}"
        us = statistics.median(samples) / steps * 1e6
        print(f"{name:<22}{us:9.1f}{ratio:13.3f}x{best:10.3f}x {verdict}")
    return ok


def _pin(cpu: int | None) -> None:
    # Every loop, and the trainer row's worker thread, on one core: a loop moved to another
    # core (or run by a thread on another core) meets other caches, which is not its cost.
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is None or cpu == -1:
        return
    allowed = sorted(os.sched_getaffinity(0))
    setaffinity(0, {allowed[-1] if cpu is None else cpu})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=50, help="steps per turn within a round")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="the CPU to pin this process (and its threads) to; default: the last one allowed; "
        "-1: do not pin",
    )
    args = parser.parse_args(argv)
    _pin(args.cpu)
    torch.set_num_threads(args.threads)
    loops = {**LOOPS, **_lightning_loops()}
    times = measure(loops, args.steps, args.rounds, args.chunk)
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.rounds} rounds, interleaved every {args.chunk} steps"
    )
    return 0 if report(times, args.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
