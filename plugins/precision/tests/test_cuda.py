"""The CUDA paths: autocast and the grad scaler on a GPU. Skipped where no GPU is present."""

from __future__ import annotations

import pytest
import torch
from conftest import Probe, regression_data
from torch.nn import functional as F

from loopkit import Fabric

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (CUDA autocast and GradScaler)"
)
pytestmark = [needs_cuda, pytest.mark.gpu]

FORWARD = {
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
    "64-true": torch.float64,
}


@pytest.mark.parametrize("precision", list(FORWARD))
def test_cuda_dtypes_and_training(precision):
    torch.manual_seed(0)
    x, y = regression_data()
    fabric = Fabric(accelerator="cuda", devices=1, precision=precision)
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.05))
    x, y = fabric.to_device((x, y))
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        out = model(x)
        loss = F.mse_loss(out, y)
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    param_dtype = torch.float32 if precision.endswith("-mixed") else FORWARD[precision]
    assert out.device.type == "cuda"
    assert out.dtype == torch.float32
    assert model.module.seen["activation"] == FORWARD[precision]
    for p in model.parameters():
        assert p.dtype == param_dtype and p.grad is not None and p.grad.dtype == param_dtype
    assert losses[-1] < 0.2 * losses[0], losses


def test_cuda_16_mixed_equals_a_manual_cuda_gradscaler_loop():
    x, y = regression_data()
    x, y = x.cuda(), y.cuda()

    torch.manual_seed(0)
    fabric = Fabric(accelerator="cuda", devices=1, precision="16-mixed")
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.05))
    assert fabric.precision.device_type == "cuda"
    for step in range(6):
        optimizer.zero_grad()
        fabric.backward(F.mse_loss(model(x), y))
        if step == 2:
            model.linear.weight.grad[0, 0] = float("inf")
        optimizer.step()

    torch.manual_seed(0)
    raw = Probe().cuda()
    raw_optimizer = torch.optim.SGD(raw.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cuda")
    for step in range(6):
        raw_optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            out = raw(x.half())
        scaler.scale(F.mse_loss(out.float(), y)).backward()
        if step == 2:
            raw.linear.weight.grad[0, 0] = float("inf")
        scaler.step(raw_optimizer)
        scaler.update()

    assert fabric.precision.scaler.get_scale() == scaler.get_scale()
    assert torch.equal(model.linear.weight, raw.linear.weight)
    assert torch.equal(model.linear.bias, raw.linear.bias)


def test_a_cpu_fabric_on_a_gpu_machine_autocasts_on_the_cpu():
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed")
    assert fabric.precision.device_type == "cpu"
    with fabric.autocast():
        y = torch.nn.Linear(2, 2)(torch.randn(1, 2))
    assert y.dtype == torch.bfloat16
