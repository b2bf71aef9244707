"""Trainer + DDP (2 processes, gloo) with accumulate_grad_batches: count the all-reduces.

Started by torchrun from test_accumulation_ddp.py. Every rank writes ``rank{R}.pt`` into the
output folder: the comm-hook calls counted before each optimizer step, and its final weights.
"""

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Callback, LoopModule, Trainer

SAMPLES, BATCH = 40, 2  # 20 samples per rank: 10 batches per rank and epoch


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 3, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(SAMPLES, 1, generator=g))


def make_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))


class Regressor(LoopModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountAllReduces(Callback):
    """Registers a DDP communication hook and records its calls between optimizer steps."""

    def __init__(self) -> None:
        self.calls = 0
        self.per_step: list[int] = []
        self.batches = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ddp = trainer.model.forward_module
        assert type(ddp).__name__ == "DistributedDataParallel", type(ddp)

        def counting_hook(state, bucket):
            self.calls += 1
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, counting_hook)

    def on_train_batch_end(self) -> None:
        self.batches += 1

    def on_before_optimizer_step(self) -> None:
        self.per_step.append(self.calls - sum(self.per_step))


def main(out: str, accumulate: int) -> None:
    counter = CountAllReduces()
    trainer = Trainer(
        accelerator="cpu", strategy="ddp", devices=2, max_epochs=1,
        accumulate_grad_batches=accumulate, callbacks=[counter], logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    module = Regressor()
    trainer.fit(module, DataLoader(dataset(), batch_size=BATCH, shuffle=False))
    torch.save(
        {
            "per_step": counter.per_step,
            "total": counter.calls,
            "batches": counter.batches,
            "global_step": trainer.global_step,
            "weights": {k: v.detach().clone() for k, v in module.net.state_dict().items()},
        },
        f"{out}/rank{trainer.global_rank}.pt",
    )
    trainer.strategy.teardown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
