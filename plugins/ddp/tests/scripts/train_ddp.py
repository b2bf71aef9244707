"""A small Fabric training script the distributed tests start in several ways.

Every rank writes ``rank{R}.pt`` into ``--out``: its final weights, what it saw and counted.
It holds no distributed code of its own: strategy and devices come from the arguments, or from
``loopkit run`` through the environment when the arguments are left out.
"""

import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric

NUM_SAMPLES, BATCH = 32, 4


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train(fabric: Fabric, args: argparse.Namespace) -> dict:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net, opt = fabric.setup(net, opt)
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=BATCH, shuffle=False))
    hook_calls = []
    forward_module = net.forward_module
    if args.count_allreduce:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            hook_calls.append(bucket.index())
            return allreduce_hook(state, bucket)

        forward_module.register_comm_hook(None, counting_hook)
    accumulation = None
    if args.accumulation_plugin:
        accumulation = fabric.add_plugin(registry_create(args.accumulate))
    step = 0
    batches = 0
    for _epoch in range(args.epochs):
        for i, (x, y) in enumerate(loader):
            batches += 1
            failing = fabric.global_rank == args.fail_rank and batches == args.fail_step
            if failing:
                with open(os.path.join(args.out, "failed_at"), "w") as f:
                    f.write(repr(time.time()))
                raise ValueError(f"boom at step {batches} on rank {fabric.global_rank}")
            if accumulation is not None:
                with accumulation(net, i, len(loader), epoch=_epoch) as steps:
                    loss = nn.functional.mse_loss(net(x), y)
                    fabric.backward(loss)  # the plugin divides the loss by the window's length
                if steps:
                    opt.step()
                    opt.zero_grad()
                    step += 1
                continue
            last = (i + 1) % args.accumulate == 0
            with fabric.no_backward_sync(net, enabled=not last):
                loss = nn.functional.mse_loss(net(x), y)
                fabric.backward(loss / args.accumulate)
            if last:
                opt.step()
                opt.zero_grad()
                step += 1
    result = {
        "rank": fabric.global_rank,
        "local_rank": fabric.local_rank,
        "world_size": fabric.world_size,
        "strategy": type(fabric.strategy).__name__,
        "forward_module": type(forward_module).__name__,
        "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "optimizer_steps": step,
        "allreduce_calls": len(hook_calls),
        "env_devices": os.environ.get("LOOPKIT_DEVICES"),
        "pid": os.getpid(),
    }
    torch.save(result, os.path.join(args.out, f"rank{fabric.global_rank}.pt"))
    return result


def registry_create(n: int):
    from loopkit.plugins import registry

    return registry().create("subscriber", "accumulation", accumulate_grad_batches=n)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--how", choices=["lazy", "launch", "spawn"], default="lazy")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--accumulation-plugin", action="store_true")
    p.add_argument("--count-allreduce", action="store_true")
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--fail-step", type=int, default=None)
    args = p.parse_args(argv)
    fabric = Fabric(accelerator="cpu", strategy=args.strategy, devices=args.devices)
    if args.how == "spawn":
        result = fabric.launch(train, args)
        torch.save(result, os.path.join(args.out, "returned.pt"))
    elif args.how == "launch":
        fabric.launch()
        train(fabric, args)
    else:
        train(fabric, args)


if __name__ == "__main__":
    main(sys.argv[1:])
