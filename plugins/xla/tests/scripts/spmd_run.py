"""Run with PJRT_DEVICE=CPU CPU_NUM_DEVICES=2: train with strategy='xla_spmd', save what the
test checks to ``sys.argv[1]``. First shows that strategy='xla' refuses several CPU replicas."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch_xla
from helpers import loader, make_model, make_optimizer, on_cpu
from torch.nn import functional as F

from loopkit import Fabric

out_path = sys.argv[1]

# Several replicas on the CPU: refused before any replica starts (they would hang).
replicas_error = ""
try:
    Fabric(accelerator="xla", devices=2).launch(lambda fabric: None)
except RuntimeError as err:
    replicas_error = str(err)

calls: list[int] = []
real_sync = torch_xla.sync


def counting_sync(*args, **kwargs):
    calls.append(1)
    return real_sync(*args, **kwargs)


torch_xla.sync = counting_sync

fabric = Fabric(accelerator="xla", strategy="xla_spmd")
model = make_model()
model, opt = fabric.setup(model, make_optimizer(model))
sharding = ""
syncs_per_step = []
for _ in range(2):
    for xb, yb in fabric.setup_dataloaders(loader(8)):
        before = len(calls)
        if not sharding:
            sharding = torch_xla._XLAC._get_xla_sharding_spec(xb)
        fabric.backward(F.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
        syncs_per_step.append(len(calls) - before)

torch.save(
    {
        "state": on_cpu(model.state_dict()),
        "world_size": fabric.world_size,
        "devices": fabric.strategy.num_devices,
        "sharding": sharding,
        "syncs_per_step": syncs_per_step,
        "replicas_error": replicas_error,
    },
    out_path,
)
