"""FSDP2 on the script's ranks: sharded parameters, training, a sharded checkpoint round trip.

Rank r writes ``rank{r}.pt``: the parameter types and shard shapes, the full weights after
4 steps, the full weights after resuming from the checkpoint taken at step 2 and running steps
3-4 again in a fresh model and optimizer, and the gradient-sync flags seen in no_backward_sync.
"""

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric
from loopkit.plugins import registry

NUM_SAMPLES, BATCH, STEPS, SAVE_AT = 32, 4, 4, 2


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 4, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=g)
    return TensorDataset(x, y)


def model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def full(net: nn.Module) -> dict:
    return {k: v.full_tensor().detach().clone() for k, v in net.state_dict().items()}


def run_steps(fabric, net, opt, loader, first: int, last: int) -> None:
    for step, (x, y) in enumerate(loader, start=1):
        if step < first:
            continue
        if step > last:
            break
        loss = nn.functional.mse_loss(net(x), y)
        fabric.backward(loss)
        opt.step()
        opt.zero_grad()


def main(out: str) -> None:
    strategy = registry().create("strategy", "fsdp", auto_wrap_policy={nn.Linear})
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=2)
    fabric.launch()
    loader = fabric.setup_dataloaders(DataLoader(data(), batch_size=BATCH))
    # The optimizer is made before setup: fsdp rebinds it to the sharded parameters.
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    net, opt = fabric.setup(net, opt)
    kinds = {name: type(p).__name__ for name, p in net.named_parameters()}
    local_shapes = {name: tuple(p.to_local().shape) for name, p in net.named_parameters()}
    sync_flags = []
    with fabric.no_backward_sync(net):
        sync_flags.append(strategy_sync(net.forward_module))
        with fabric.no_backward_sync(net, enabled=False):
            sync_flags.append(strategy_sync(net.forward_module))
    sync_flags.append(strategy_sync(net.forward_module))

    ckpt = os.path.join(out, "ckpt")
    run_steps(fabric, net, opt, loader, 1, SAVE_AT)
    fabric.save(ckpt, {"model": net, "optimizer": opt, "step": SAVE_AT, "note": "fsdp"})
    run_steps(fabric, net, opt, loader, SAVE_AT + 1, STEPS)
    trained = full(net)

    # A fresh model (other initial weights) and optimizer, restored from the checkpoint.
    net2 = model(seed=123)
    net2 = fabric.setup_module(net2)
    opt2 = fabric.setup_optimizers(torch.optim.Adam(net2.parameters(), lr=0.05))
    state = {"model": net2, "optimizer": opt2, "step": 0}
    extra = fabric.load(ckpt, state)
    restored_at_save = full(net2)
    run_steps(fabric, net2, opt2, loader, state["step"] + 1, STEPS)
    result = {
        "rank": fabric.global_rank,
        "kinds": kinds,
        "local_shapes": local_shapes,
        "sync_flags": sync_flags,
        "trained": trained,
        "resumed": full(net2),
        "restored_step": state["step"],
        "restored_at_save": restored_at_save,
        "extra": extra,
        "ckpt_files": sorted(os.listdir(ckpt)),
    }
    torch.save(result, os.path.join(out, f"rank{fabric.global_rank}.pt"))


def strategy_sync(module) -> list:
    # The flag FSDP2's set_requires_gradient_sync sets, per sharded unit (there is no getter).
    from torch.distributed.fsdp import FSDPModule

    return [
        g.reduce_grads
        for m in module.modules()
        if isinstance(m, FSDPModule)
        for g in m._get_fsdp_state()._fsdp_param_groups
    ]


if __name__ == "__main__":
    main(sys.argv[1])
