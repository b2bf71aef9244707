"""Each precision in a Fabric loop on the CPU: dtypes, training, and equality with raw PyTorch."""

from __future__ import annotations

import pytest
import torch
from conftest import Probe, regression_data
from torch import nn
from torch.nn import functional as F

from loopkit import Fabric

# name -> (dtype the forward computes in, dtype of parameters and gradients)
EXPECTED = {
    "32-true": (torch.float32, torch.float32),
    "64-true": (torch.float64, torch.float64),
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-mixed": (torch.float16, torch.float32),
    "bf16-true": (torch.bfloat16, torch.bfloat16),
    "16-true": (torch.float16, torch.float16),
}


def fabric_run(precision, steps=30, lr=0.05, seed=0):
    torch.manual_seed(seed)
    x, y = regression_data()
    fabric = Fabric(accelerator="cpu", precision=precision)
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer = fabric.setup(model, optimizer)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = F.mse_loss(out, y)
        fabric.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return fabric, model, out, losses


def raw_run(precision, steps=30, lr=0.05, seed=0):
    """The same loop written with plain PyTorch, the way each precision is defined."""
    torch.manual_seed(seed)
    x, y = regression_data()
    model = Probe()
    forward_dtype, param_dtype = EXPECTED[precision]
    model.to(dtype=param_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    for _ in range(steps):
        optimizer.zero_grad()
        if precision.endswith("-mixed"):
            with torch.autocast("cpu", dtype=forward_dtype):
                out = model(x.to(forward_dtype))
        else:
            out = model(x.to(forward_dtype))
        loss = F.mse_loss(out.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_dtypes_of_outputs_parameters_gradients(precision):
    _, model, out, _ = fabric_run(precision, steps=2)
    forward_dtype, param_dtype = EXPECTED[precision]
    assert out.dtype == torch.float32  # outputs always come back in the default dtype
    assert model.module.seen["input"] == forward_dtype
    assert model.module.seen["activation"] == forward_dtype
    for p in model.parameters():
        assert p.dtype == param_dtype
        assert p.grad is not None and p.grad.dtype == param_dtype


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_training_reduces_the_loss(precision):
    _, _, _, losses = fabric_run(precision, steps=40)
    assert losses[-1] < 0.2 * losses[0], losses


@pytest.mark.parametrize("precision", [p for p in EXPECTED if p != "32-true"])
def test_final_weights_equal_the_raw_pytorch_loop(precision):
    _, model, _, _ = fabric_run(precision, steps=15)
    raw = raw_run(precision, steps=15)
    for (name, ours), theirs in zip(model.module.named_parameters(), raw.parameters()):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("bf16", "bf16-mixed"),
        ("16", "16-mixed"),
        (16, "16-mixed"),
        ("64", "64-true"),
        (64, "64-true"),
        ("bf16-mixed", "bf16-mixed"),
        ("16-mixed", "16-mixed"),
        ("bf16-true", "bf16-true"),
        ("16-true", "16-true"),
        ("64-true", "64-true"),
    ],
)
def test_aliases_resolve_to_the_canonical_precision(given, canonical):
    precision = Fabric(accelerator="cpu", precision=given).precision
    assert precision.plugin_name == canonical
    assert canonical in repr(precision)


@pytest.mark.parametrize("given", ["32", 32, None])
def test_32_stays_the_kernel_default(given):
    precision = Fabric(accelerator="cpu", precision=given).precision
    assert type(precision).__module__ == "loopkit.precision"


def test_unknown_precision_lists_the_installed_ones():
    with pytest.raises(ValueError, match="bf16-mixed") as info:
        Fabric(accelerator="cpu", precision="8-mixed")
    assert "'8-mixed'" in str(info.value)


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_inputs_are_cast_nested_and_integers_are_left_alone(precision):
    forward_dtype, _ = EXPECTED[precision]
    seen = {}

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, batch, *, extra):
            seen["x"] = batch["x"].dtype
            seen["ids"] = batch["ids"].dtype
            seen["pair"] = tuple(t.dtype for t in batch["pair"])
            seen["extra"] = extra.dtype
            return {"out": self.linear(batch["x"]), "ids": batch["ids"], "n": 3}

    fabric = Fabric(accelerator="cpu", precision=precision)
    model = fabric.setup(Nested())
    batch = {
        "x": torch.randn(3, 2),
        "ids": torch.arange(3),
        "pair": [torch.randn(1, dtype=torch.float64), torch.ones(1, dtype=torch.bool)],
    }
    out = model(batch, extra=torch.zeros(1))
    assert seen == {
        "x": forward_dtype,
        "ids": torch.int64,
        "pair": (forward_dtype if precision != "32-true" else torch.float64, torch.bool),
        "extra": forward_dtype,
    }
    assert out["out"].dtype == torch.float32
    assert out["ids"].dtype == torch.int64
    assert out["n"] == 3


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_fabric_autocast_is_the_forward_context(precision):
    forward_dtype, param_dtype = EXPECTED[precision]
    fabric = Fabric(accelerator="cpu", precision=precision)
    layer = fabric.setup(nn.Linear(3, 3))
    x = torch.randn(2, 3, dtype=param_dtype)
    with fabric.autocast():
        # A computation outside the module's forward, e.g. a loss on the raw module's output.
        y = layer.module(x)
    assert y.dtype == forward_dtype


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32-true", torch.float32),
        ("64-true", torch.float64),
        ("bf16-true", torch.bfloat16),
        ("16-true", torch.float16),
        ("bf16-mixed", torch.float32),
        ("16-mixed", torch.float32),
    ],
)
def test_init_module_and_init_tensor_use_the_parameter_dtype(precision, dtype):
    fabric = Fabric(accelerator="cpu", precision=precision)
    with fabric.init_module():
        layer = nn.Linear(2, 2)
    with fabric.init_tensor():
        t = torch.zeros(2)
    assert layer.weight.dtype == dtype
    assert t.dtype == dtype
    assert torch.get_default_dtype() == torch.float32


def test_true_precision_forward_creates_tensors_in_its_dtype():
    class MakesTensors(nn.Module):
        def forward(self, x):
            return x + torch.ones(x.shape)

    fabric = Fabric(accelerator="cpu", precision="bf16-true")
    model = fabric.setup(MakesTensors())
    seen = []
    model.module.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = model(torch.ones(2))
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32


def test_mixed_precision_refuses_a_device_other_than_the_fabric_one():
    from loopkit_precision import BF16MixedPrecision

    with pytest.raises(ValueError, match=r"device='cuda'.*runs on 'cpu'"):
        Fabric(accelerator="cpu", precision=BF16MixedPrecision(device="cuda"))
    fabric = Fabric(accelerator="cpu", precision=BF16MixedPrecision(device="cpu"))
    assert fabric.precision.device_type == "cpu"


def test_the_precision_package_is_imported_only_when_named():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from loopkit import Fabric\n"
        "Fabric(accelerator='cpu')\n"
        "assert 'loopkit_precision' not in sys.modules, 'imported by 32-true'\n"
        "Fabric(accelerator='cpu', precision='bf16')\n"
        "assert 'loopkit_precision' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
