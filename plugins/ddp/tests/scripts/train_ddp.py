"""A small Fabric training script the distributed tests start in several ways.

Every rank writes ``rank{R}.pt`` into ``--out``: for each variant trained (``--variants``), its
final weights and what it counted, and which samples a shuffled loader gave it per epoch. The
script holds no distributed code of its own: strategy and devices come from the arguments, or
from ``loopkit run`` through the environment when the arguments are left out.

Variants, each a fresh model trained in the same processes:

``plain``       one optimizer step per batch
``accumulate``  4 batches per step with ``fabric.no_backward_sync`` (loss divided by 4)
``plugin``      4 batches per step with the loopkit-accumulation plugin
"""

import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric

NUM_SAMPLES, BATCH, EPOCHS, EVERY = 32, 4, 2, 4


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def count_allreduces(forward_module: nn.Module) -> list:
    """Register a DDP communication hook on ``forward_module`` that counts gradient all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    calls = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    forward_module.register_comm_hook(None, counting_hook)
    return calls


def train_variant(
    fabric: Fabric, variant: str, args: argparse.Namespace, net: nn.Module | None = None
) -> dict:
    net = model() if net is None else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net, opt = fabric.setup(net, opt)
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=BATCH, shuffle=False))
    forward_module = net.forward_module
    calls = count_allreduces(forward_module) if args.count_allreduce else []
    accumulation = None
    if variant == "plugin":
        from loopkit.plugins import registry

        accumulation = fabric.add_plugin(
            registry().create("subscriber", "accumulation", accumulate_grad_batches=EVERY)
        )
    every = 1 if variant == "plain" else EVERY
    steps = batches = 0
    for epoch in range(EPOCHS):
        for i, (x, y) in enumerate(loader):
            batches += 1
            if fabric.global_rank == args.fail_rank and batches == args.fail_step:
                with open(os.path.join(args.out, "failed_at"), "w") as f:
                    f.write(repr(time.time()))
                raise ValueError(f"boom at step {batches} on rank {fabric.global_rank}")
            if accumulation is not None:
                with accumulation(net, i, len(loader), epoch=epoch) as step:
                    fabric.backward(nn.functional.mse_loss(net(x), y))  # divided by the plugin
            else:
                step = (i + 1) % every == 0
                with fabric.no_backward_sync(net, enabled=not step):
                    fabric.backward(nn.functional.mse_loss(net(x), y) / every)
            if step:
                opt.step()
                opt.zero_grad()
                steps += 1
    return {
        "forward_module": type(forward_module).__name__,
        "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "optimizer_steps": steps,
        "allreduce_calls": len(calls),
    }


def samples_seen(fabric: Fabric) -> list:
    """The samples a shuffled loader gives this rank, per epoch (seeded by seed_everything)."""
    loader = fabric.setup_dataloaders(DataLoader(torch.arange(20), batch_size=3, shuffle=True))
    return [[int(i) for batch in loader for i in batch] for _ in range(3)]


def train(fabric: Fabric, args: argparse.Namespace, net: nn.Module | None = None) -> dict:
    fabric.seed_everything(7)
    result = {
        "rank": fabric.global_rank,
        "local_rank": fabric.local_rank,
        "world_size": fabric.world_size,
        "strategy": type(fabric.strategy).__name__,
        "env_devices": os.environ.get("LOOPKIT_DEVICES"),
        "pid": os.getpid(),
    }
    for i, variant in enumerate(args.variants.split(",")):
        result[variant] = train_variant(fabric, variant, args, net if i == 0 else None)
    if args.samples:
        result["samples"] = samples_seen(fabric)
    torch.save(result, os.path.join(args.out, f"rank{fabric.global_rank}.pt"))
    return result


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--how", choices=["lazy", "launch", "spawn"], default="lazy")
    p.add_argument("--variants", default="plain")
    p.add_argument("--samples", action="store_true")
    p.add_argument("--count-allreduce", action="store_true")
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--fail-step", type=int, default=None)
    p.add_argument(
        "--model-from-caller", action="store_true",
        help="spawn: the first variant's model is made here and passed through launch()",
    )  # fmt: skip
    args = p.parse_args(argv)
    fabric = Fabric(accelerator="cpu", strategy=args.strategy, devices=args.devices)
    if args.how == "spawn":
        result = fabric.launch(train, args, model() if args.model_from_caller else None)
        torch.save(result, os.path.join(args.out, "returned.pt"))
    elif args.how == "launch":
        fabric.launch()
        train(fabric, args)
    else:
        train(fabric, args)


if __name__ == "__main__":
    main(sys.argv[1:])
