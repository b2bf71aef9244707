"""What each precision costs in a Fabric loop, against the same precision written in plain PyTorch.

Run: ``.venv/bin/python bench/precision.py`` (needs loopkit-precision installed). One MLP
(256-512-512-1, batch 128, SGD, one torch thread) is trained for ``--steps`` steps under each
precision, twice: by a plain PyTorch loop that does what the precision is defined as (``.to``
the dtype, ``torch.autocast``, a ``GradScaler`` loop) and by a Fabric loop naming the precision.
All loops are timed in rounds, interleaved in this one process (the order rotates every round),
so machine noise hits them alike. Two ratios per precision, medians over rounds:

``plugin``   the Fabric loop's time over the plain loop of the same precision: what loopkit adds
             (input/output casts, the phase contexts, the scaler bookkeeping).
``vs fp32``  the plain loop's time over the plain float32 loop: what the precision itself costs
             or saves on this hardware (no loopkit involved).

Target: ``plugin`` at most 1.05x for every precision.
"""

from __future__ import annotations

import argparse
import collections.abc as c
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from loopkit import Fabric

Batch = tuple[torch.Tensor, torch.Tensor]
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
MIXED = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
TRUE = {"32-true": torch.float32, "64-true": torch.float64, "bf16-true": torch.bfloat16,
        "16-true": torch.float16}  # fmt: skip
TARGET = 1.05
LR = 0.001


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 1))  # fmt: skip
    return model, torch.optim.SGD(model.parameters(), lr=LR)


def make_batches(n: int = 16) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(128, 256, generator=gen), torch.randn(128, 1, generator=gen))
            for _ in range(n)]  # fmt: skip


def raw_loop(precision: str, steps: int, batches: list[Batch]) -> c.Callable[[], None]:
    model, optimizer = make_model()
    mse = nn.functional.mse_loss
    data = [batches[i % len(batches)] for i in range(steps)]
    if precision in MIXED:
        dtype = MIXED[precision]
        scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None

        def run_mixed() -> None:
            for x, y in data:
                with torch.autocast("cpu", dtype=dtype):
                    out = model(x.to(dtype))
                loss = mse(out.float(), y)
                optimizer.zero_grad()
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()

        return run_mixed
    dtype = TRUE[precision]
    model.to(dtype)

    def run_true() -> None:
        for x, y in data:
            loss = mse(model(x.to(dtype)).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run_true


def fabric_loop(precision: str, steps: int, batches: list[Batch]) -> c.Callable[[], None]:
    fabric = Fabric(accelerator="cpu", precision=precision)
    model, optimizer = fabric.setup(*make_model())
    mse = nn.functional.mse_loss
    data = [batches[i % len(batches)] for i in range(steps)]

    def run() -> None:
        for x, y in data:
            loss = mse(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()

    return run


def measure(steps: int, rounds: int, warmup: int = 1) -> dict[tuple[str, str], list[float]]:
    """Seconds per round for every (loop, precision), rounds interleaved, order rotating."""
    batches = make_batches()
    cases = [(kind, p) for p in PRECISIONS for kind in ("raw", "fabric")]
    times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for r in range(warmup + rounds):
        order = cases[r % len(cases) :] + cases[: r % len(cases)]
        for kind, precision in order:
            build = raw_loop if kind == "raw" else fabric_loop
            run = build(precision, steps, batches)
            start = time.perf_counter()
            run()
            if r >= warmup:
                times[(kind, precision)].append(time.perf_counter() - start)
    return times


def report(times: dict[tuple[str, str], list[float]], steps: int) -> bool:
    ok = True
    fp32 = times[("raw", "32-true")]
    print(f"{'precision':<12}{'raw us/step':>12}{'plugin':>10}{'vs fp32':>10}{'target':>9}")
    for p in PRECISIONS:
        raw, fab = times[("raw", p)], times[("fabric", p)]
        plugin = statistics.median(f / r for f, r in zip(fab, raw))
        vs32 = statistics.median(r / b for r, b in zip(raw, fp32))
        met = plugin <= TARGET
        ok &= met
        us = statistics.median(raw) / steps * 1e6
        verdict = "met" if met else "MISSED"
        print(f"{p:<12}{us:12.1f}{plugin:9.3f}x{vs32:9.2f}x{TARGET:8.2f}x {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = measure(args.steps, args.rounds)
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.rounds} rounds"
    )
    return 0 if report(times, args.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
