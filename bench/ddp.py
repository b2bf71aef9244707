"""What a loopkit Fabric loop under ``ddp`` costs over the same loop in raw PyTorch DDP.

Run: ``.venv/bin/python bench/ddp.py`` (needs loopkit-ddp). Two processes on the CPU (gloo, one
torch thread each) train the tiny workload of ``bench/overhead.py`` (MLP 32-64-1, batch 32 per
rank, SGD) in two loops, interleaved in the same processes and the same process group, the order
rotating every round:

``raw``     ``DistributedDataParallel`` by hand: zero_grad, forward, backward, step
``fabric``  ``Fabric(strategy="ddp", devices=2)``: ``fabric.setup``, ``fabric.backward``

A round's time is the slower rank's. The figure is the median over rounds of fabric/raw in the
same round (the minimum-time ratio beside it). Target: at most 1.05x.

Then the gradient all-reduces of 16 batches are counted with a DDP communication hook registered
on ``fabric_module.forward_module``: without accumulation, accumulating 4 batches with
``fabric.no_backward_sync``, and with the accumulation plugin when it is installed.
"""

from __future__ import annotations

import argparse
import collections.abc as c
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch import nn

WORLD = 2
LR = 0.01
TARGET = 1.05
Batch = tuple[torch.Tensor, torch.Tensor]


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    return model, torch.optim.SGD(model.parameters(), lr=LR)


def make_batches(rank: int, n: int = 64) -> list[Batch]:
    gen = torch.Generator().manual_seed(1 + rank)
    return [
        (torch.randn(32, 32, generator=gen), torch.randn(32, 1, generator=gen)) for _ in range(n)
    ]


def raw_loop(steps: int, batches: list[Batch]) -> c.Callable[[], None]:
    model, optimizer = make_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    data = [batches[i % len(batches)] for i in range(steps)]
    mse = nn.functional.mse_loss

    def run() -> None:
        for x, y in data:
            loss = mse(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def fabric_loop(steps: int, batches: list[Batch]) -> c.Callable[[], None]:
    from loopkit import Fabric

    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=WORLD)
    model, optimizer = fabric.setup(*make_model())
    data = [batches[i % len(batches)] for i in range(steps)]
    mse = nn.functional.mse_loss

    def run() -> None:
        for x, y in data:
            loss = mse(model(x), y)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()

    return run


LOOPS = {"raw": raw_loop, "fabric": fabric_loop}


def timed(run: c.Callable[[], None]) -> float:
    dist.barrier()
    start = time.perf_counter()
    run()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the round lasts as long as the slower rank
    return float(elapsed.item())


def measure(steps: int, rounds: int, batches: list[Batch]) -> dict[str, list[float]]:
    runs = {name: build(steps, batches) for name, build in LOOPS.items()}
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds = timed(runs[name])
            if r:
                times[name].append(seconds)
    return times


def count_allreduces(
    mode: str, batches: list[Batch], n: int = 16, every: int = 4
) -> tuple[int, int]:
    """(optimizer steps, gradient all-reduces) for ``n`` batches trained in ``mode``."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from loopkit import Fabric

    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=WORLD)
    model, optimizer = fabric.setup(*make_model())
    calls = []

    def counting(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    model.forward_module.register_comm_hook(None, counting)
    mse = nn.functional.mse_loss
    steps = 0
    accumulation = None
    if mode == "plugin":
        from loopkit.plugins import registry

        accumulation = fabric.add_plugin(
            registry().create("subscriber", "accumulation", accumulate_grad_batches=every)
        )
    for i in range(n):
        x, y = batches[i % len(batches)]
        if accumulation is not None:
            with accumulation(model, i, n) as step:
                fabric.backward(mse(model(x), y))
        else:
            step = mode == "none" or (i + 1) % every == 0
            with fabric.no_backward_sync(model, enabled=not step):
                fabric.backward(mse(model(x), y) / (1 if mode == "none" else every))
        if step:
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
    return steps, len(calls)


def worker(rank: int, port: int, steps: int, rounds: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        batches = make_batches(rank)
        times = measure(steps, rounds, batches)
        counts = {"none": count_allreduces("none", batches)}
        counts["no_backward_sync"] = count_allreduces("no_backward_sync", batches)
        try:
            import loopkit_accumulation  # noqa: F401
        except ImportError:
            pass
        else:
            counts["plugin"] = count_allreduces("plugin", batches)
        if rank == 0:
            torch.save({"times": times, "counts": counts}, out)
    finally:
        import gc

        gc.collect()
        dist.destroy_process_group()


def report(times: dict[str, list[float]], counts: dict[str, tuple[int, int]], steps: int) -> bool:
    raw = times["raw"]
    ratios = [f / r for f, r in zip(times["fabric"], raw)]
    median, best = statistics.median(ratios), min(times["fabric"]) / min(raw)
    print(f"{'loop':<8} {'median s':>9} {'ms/step':>8} {'x raw (median)':>15} {'x raw (min)':>12}")
    for name, ts in times.items():
        m = statistics.median(ts)
        ratio = "" if name == "raw" else f"{median:.3f}"
        mins = "" if name == "raw" else f"{best:.3f}"
        print(f"{name:<8} {m:>9.3f} {1000 * m / steps:>8.3f} {ratio:>15} {mins:>12}")
    ok = median <= TARGET
    print(f"target fabric <= {TARGET:.2f}x raw: {'met' if ok else 'MISSED'} ({median:.3f}x)")
    print()
    print("gradient all-reduces for 16 batches (a DDP communication hook counts them):")
    labels = {
        "none": "no accumulation",
        "no_backward_sync": "accumulate 4, fabric.no_backward_sync",
        "plugin": "accumulate 4, accumulation plugin",
    }
    for mode, (opt_steps, allreduces) in counts.items():
        print(f"  {labels[mode]:<40} optimizer steps {opt_steps:>3}   all-reduces {allreduces:>3}")
    if "plugin" not in counts:
        print("  (accumulation plugin not installed: row skipped)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Short rounds, many of them: a fabric round and a raw round side by side see the same load,
    # which matters on a shared machine more than the length of any one round.
    parser.add_argument("--steps", type=int, default=50, help="steps per loop per round")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    from loopkit.plugins import registry

    if "ddp" not in registry():
        print("bench/ddp.py needs loopkit-ddp: pip install -c constraints.txt -e plugins/ddp")
        return 2
    from loopkit_ddp.environments import find_free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.start_processes(
            worker, args=(find_free_port(), args.steps, args.rounds, out), nprocs=WORLD,
            start_method="spawn",
        )  # fmt: skip
        result = torch.load(out, weights_only=False)
    print(f"bench/ddp.py: {WORLD} processes, gloo, {args.steps} steps x {args.rounds} rounds")
    report(result["times"], result["counts"], args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
