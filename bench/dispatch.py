"""Cost of ``Bus.call`` against a plain Python loop over pre-bound methods.

Run: ``.venv/bin/python bench/dispatch.py``. Every case is timed in rounds that are interleaved
with its baseline in this one process, so slow phases of a busy machine hit both alike; each
figure is the fastest per-call time seen over all rounds (the cost without interference; the
median ratio over rounds is printed beside it, to show how noisy the run was). Each timed window
is short (2000 calls, a few milliseconds) so that, on a busy machine, most windows run without
being preempted; long windows penalise whichever case takes longer. Targets, from the
kernel's issue: five receivers within 3x of the plain loop, no receivers under 0.3 us per call.

Two receiver shapes are measured: receivers that take every keyword the hook passes, and
receivers that name a subset (Lightning-style callbacks that take only ``trainer`` and
``batch_idx``). The baseline for each is what a hand-written loop would do: call each bound
method with exactly the keywords it takes, as literal keyword arguments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loopkit.events import Bus

HOOK = "on_train_batch_start"
TARGET_5 = 3.0
TARGET_0_US = 0.3


class TakesAll:
    def on_train_batch_start(
        self, trainer: object, module: object, batch: object, batch_idx: int
    ) -> None:
        pass


class TakesSome:
    def on_train_batch_start(self, trainer: object, batch_idx: int) -> None:
        pass


def _per_call(fn: t.Callable[[int], None], n: int, inner: int) -> float:
    """Best of ``inner`` runs of ``fn(n)``, in microseconds per call."""
    best = float("inf")
    for _ in range(inner):
        start = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best / 1000.0


def _cases(receivers: int, shape: type) -> tuple[t.Callable[[int], None], t.Callable[[int], None]]:
    objs = [shape() for _ in range(receivers)]
    bus = Bus(fires=[HOOK])
    for obj in objs:
        bus.connect(obj)
    call = bus.call
    bound = [obj.on_train_batch_start for obj in objs]
    trainer, module, batch = object(), object(), object()

    if shape is TakesAll:

        def plain(n: int) -> None:
            for i in range(n):
                for m in bound:
                    m(trainer=trainer, module=module, batch=batch, batch_idx=i)

    else:

        def plain(n: int) -> None:
            for i in range(n):
                for m in bound:
                    m(trainer=trainer, batch_idx=i)

    def via_bus(n: int) -> None:
        for i in range(n):
            call(HOOK, trainer=trainer, module=module, batch=batch, batch_idx=i)

    return plain, via_bus


def _empty_function_case() -> t.Callable[[int], None]:
    trainer, module, batch = object(), object(), object()

    def f(**kwargs: object) -> None:
        pass

    def run(n: int) -> None:
        for i in range(n):
            f(trainer=trainer, module=module, batch=batch, batch_idx=i)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--inner", type=int, default=5)
    args = parser.parse_args(argv)

    counts = (0, 1, 5, 10)
    cases = {
        (shape.__name__, k): _cases(k, shape) for shape in (TakesAll, TakesSome) for k in counts
    }
    empty_fn = _empty_function_case()
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        key: ([], []) for key in cases
    }
    fn_samples: list[float] = []
    for _ in range(args.rounds):  # interleave: every case once per round
        fn_samples.append(_per_call(empty_fn, args.calls, args.inner))
        for key, (plain, via_bus) in cases.items():
            samples[key][0].append(_per_call(plain, args.calls, args.inner))
            samples[key][1].append(_per_call(via_bus, args.calls, args.inner))

    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.calls} calls")
    print(
        f"{'receivers':<16}{'plain loop us':>14}{'bus.call us':>13}{'ratio':>8}{'median ratio':>14}"
    )
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for key, (plain_s, bus_s) in samples.items():
        plain_us, bus_us = min(plain_s), min(bus_s)
        results[key] = (plain_us, bus_us)
        if key[1]:
            ratio = f"{bus_us / plain_us:8.2f}"
            median = f"{statistics.median(bus_s) / statistics.median(plain_s):14.2f}"
        else:
            ratio, median = f"{'-':>8}", f"{'-':>14}"
        print(f"{key[0] + ' x' + str(key[1]):<16}{plain_us:14.3f}{bus_us:13.3f}{ratio}{median}")
    fn_us = min(fn_samples)
    zero = results[("TakesAll", 0)][1]
    print(f"empty function call with the same keywords: {fn_us:.3f} us")
    print(
        f"0 receivers: {zero:.3f} us per call ({zero / fn_us:.2f}x a function call); "
        f"target < {TARGET_0_US} us: {'met' if zero < TARGET_0_US else 'MISSED'}"
    )
    ok = True
    for shape in ("TakesAll", "TakesSome"):
        plain_us, bus_us = results[(shape, 5)]
        met = bus_us / plain_us <= TARGET_5
        ok &= met
        print(
            f"5 receivers ({shape}): {bus_us / plain_us:.2f}x the plain loop; "
            f"target <= {TARGET_5}x: {'met' if met else 'MISSED'}"
        )
    return 0 if ok and zero < TARGET_0_US else 1


if __name__ == "__main__":
    sys.exit(main())
