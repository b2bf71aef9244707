"""strategy='xla' with one replica per device, checked against one process on the global batch.

This is the multi-replica run that cannot happen on a CPU (PJRT runs CPU replicas as threads,
and collectives between them hang in torch_xla 2.9). On a TPU host, from the repository root:

    PJRT_DEVICE=TPU python plugins/xla/tests/scripts/replicas_run.py

It prints one line per check and exits 1 when one fails. With one device (PJRT_DEVICE=CPU, say)
the same checks run in this process; the test suite runs it so.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import typing as t

import torch
from helpers import X, Y, eager_reference, make_model, make_optimizer, on_cpu
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from loopkit import Fabric

PER_REPLICA_BATCH = 2
EPOCHS = 2


def train(fabric: Fabric) -> dict[str, t.Any]:
    """Runs in every replica; the launcher returns the master ordinal's result."""
    import torch_xla.backends
    import torch_xla.runtime

    if torch_xla.runtime.device_type() == "TPU":
        # TPUs multiply in bfloat16 passes by default; the check compares with CPU float32.
        torch_xla.backends.set_mat_mul_precision("highest")
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    data = DataLoader(TensorDataset(X, Y), batch_size=PER_REPLICA_BATCH)
    loader = fabric.setup_dataloaders(data)  # a DistributedSampler: every n-th sample
    for _ in range(EPOCHS):
        for xb, yb in loader:
            fabric.backward(F.mse_loss(model(xb), yb))
            fabric.clip_gradients(model, opt, max_norm=100.0)  # clipping sees averaged grads
            opt.step()
            opt.zero_grad()
    # every replica must hold the same weights: compare each one's checksum
    checksum = sum(p.detach().double().sum() for p in model.parameters())
    sums = fabric.all_gather(checksum.float()).cpu()
    fabric.barrier("trained")
    return {
        "world_size": fabric.world_size,
        "rank": fabric.global_rank,
        "state": on_cpu(model.state_dict()),
        "sums": sums,
    }


def main() -> int:
    fabric = Fabric(accelerator="xla", devices="auto")
    n = len(fabric.strategy.parallel_devices)
    if len(X) % (n * PER_REPLICA_BATCH):
        print(f"FAIL: {len(X)} samples do not split into batches over {n} replicas")
        return 1
    result = fabric.launch(train)
    # The reference runs after the replicas: in this process, nothing may run a backward
    # before the replicas are forked (torch's autograd engine is set up once per process).
    expected = eager_reference(epochs=EPOCHS, batch_size=n * PER_REPLICA_BATCH)
    checks = {
        f"{n} replica(s), world size reported {result['world_size']}": result["world_size"] == n,
        "the master ordinal returned the result": result["rank"] == 0,
        "every replica holds the same weights": bool(
            torch.allclose(result["sums"], result["sums"][0].expand_as(result["sums"]))
        ),
        "weights match one process on the global batch": all(
            torch.allclose(result["state"][k], expected[k], rtol=1e-4, atol=1e-5)
            for k in expected
        ),
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
