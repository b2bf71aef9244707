"""Each precision in loopkit.Trainer on the CPU, against the same training written in PyTorch."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import regression_data
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from loopkit import LoopModule, Trainer
from loopkit_precision import FP16MixedPrecision

BATCH = 16  # 64 samples: 4 steps per epoch
LR = 0.05

# name -> (dtype the training step computes in, dtype of parameters and gradients)
EXPECTED = {
    "32-true": (torch.float32, torch.float32),
    "64-true": (torch.float64, torch.float64),
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-mixed": (torch.float16, torch.float32),
    "bf16-true": (torch.bfloat16, torch.bfloat16),
    "16-true": (torch.float16, torch.float16),
}


class Regressor(LoopModule):
    def __init__(self, optimizer: str = "sgd") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.optimizer_name = optimizer
        self.seen: dict[str, torch.dtype] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.linear(x)
        self.seen.update(input=x.dtype, target=y.dtype, activation=out.dtype)
        loss = F.mse_loss(out, y)
        self.seen["loss"] = loss.dtype
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "lbfgs":
            return torch.optim.LBFGS(self.parameters())
        return torch.optim.SGD(self.parameters(), lr=LR)


class Record:
    """Gradient dtypes as on_before_optimizer_step sees them, and the loss of every batch."""

    def __init__(self, inject_inf_at=()):
        self.grads: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.inject_inf_at = set(inject_inf_at)
        self.backwards = 0

    def on_after_backward(self, module):
        if self.backwards in self.inject_inf_at:
            module.linear.weight.grad[0, 0] = float("inf")
        self.backwards += 1

    def on_before_optimizer_step(self, module):
        self.grads.append(module.linear.weight.grad.clone())

    def on_train_batch_end(self, outputs):
        self.losses.append(float(outputs["loss"]))
        assert outputs["loss"].dtype == torch.float32  # handed back in float32


def loader():
    x, y = regression_data()
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def fit(precision, module=None, epochs=1, **kwargs):
    module = module or Regressor()
    record = Record(kwargs.pop("inject_inf_at", ()))
    trainer = Trainer(
        accelerator="cpu",
        precision=precision,
        callbacks=[record],
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )
    trainer.fit(module, loader())
    return trainer, module, record


def raw(precision, epochs=1, *, clip=None, inject_inf_at=(), scaler=None):
    """The same training in plain PyTorch: the training step runs inside the precision's forward."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    compute, param_dtype = EXPECTED[precision]
    model.to(param_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    if precision == "16-mixed" and scaler is None:
        scaler = torch.amp.GradScaler("cpu")
    backwards = 0
    for _ in range(epochs):
        for x, y in loader():
            optimizer.zero_grad()
            if precision.endswith("-mixed"):
                context = torch.autocast("cpu", dtype=compute)
            elif precision != "32-true":
                context = _default_dtype(compute)
            else:
                context = contextlib.nullcontext()
            with context:
                loss = F.mse_loss(model(x.to(compute)), y.to(compute))
            loss = loss.float()
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if backwards in inject_inf_at:
                model.weight.grad[0, 0] = float("inf")
            backwards += 1
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
    return model, scaler


@contextlib.contextmanager
def _default_dtype(dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_trainer_dtypes_of_step_parameters_and_gradients(precision):
    _, module, record = fit(precision)
    compute, param_dtype = EXPECTED[precision]
    assert module.seen["input"] == module.seen["target"] == compute
    assert module.seen["activation"] == compute
    for p in module.parameters():
        assert p.dtype == param_dtype
    assert [g.dtype for g in record.grads] == [param_dtype] * 4


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_trainer_training_reduces_the_loss(precision):
    _, _, record = fit(precision, epochs=10)
    assert len(record.losses) == 40
    assert record.losses[-1] < 0.2 * record.losses[0], record.losses


@pytest.mark.parametrize("precision", [p for p in EXPECTED if p != "32-true"])
def test_trainer_final_weights_equal_the_raw_pytorch_loop(precision):
    _, module, _ = fit(precision, epochs=3)
    model, _ = raw(precision, epochs=3)
    assert torch.equal(module.linear.weight, model.weight)
    assert torch.equal(module.linear.bias, model.bias)


def test_trainer_16_mixed_clips_unscaled_gradients_and_skips_an_inf_step():
    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0**10)

    trainer, module, record = fit(
        FP16MixedPrecision(scaler=scaler()),
        epochs=2,
        gradient_clip_val=0.05,
        inject_inf_at={2},
    )
    model, raw_scaler = raw("16-mixed", epochs=2, clip=0.05, inject_inf_at={2}, scaler=scaler())
    assert torch.equal(module.linear.weight, model.weight)
    assert torch.equal(module.linear.bias, model.bias)
    assert trainer.precision.scaler.get_scale() == raw_scaler.get_scale() == 2.0**9
    # on_before_optimizer_step saw true gradients (the inf one aside), before clipping
    finite = [g for i, g in enumerate(record.grads) if i != 2]
    assert all(float(torch.linalg.vector_norm(g)) < 100 for g in finite)
    assert torch.isinf(record.grads[2]).any()


def test_trainer_16_mixed_refuses_lbfgs():
    with pytest.raises(TypeError, match=r"LBFGS.*16-mixed does not support it"):
        fit("16-mixed", module=Regressor(optimizer="lbfgs"))


@pytest.mark.parametrize(
    ("given", "canonical"), [(16, "16-mixed"), ("bf16", "bf16-mixed"), (64, "64-true")]
)
def test_trainer_accepts_the_aliases(given, canonical):
    trainer = Trainer(
        accelerator="cpu",
        precision=given,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    assert trainer.precision.plugin_name == canonical


def test_trainer_16_mixed_with_gradient_accumulation_equals_the_manual_loop():
    pytest.importorskip("loopkit_accumulation", reason="needs loopkit-accumulation")

    def scaler():
        return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)

    trainer, module, record = fit(
        FP16MixedPrecision(scaler=scaler()), epochs=3, accumulate_grad_batches=2
    )
    assert trainer.global_step == 6 and len(record.grads) == 6

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    raw_scaler = scaler()
    for _ in range(3):
        for i, (x, y) in enumerate(loader()):
            if i % 2 == 0:
                optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = F.mse_loss(model(x.half()), y.half())
            raw_scaler.scale(loss.float() / 2).backward()
            if i % 2 == 1:
                raw_scaler.step(optimizer)
                raw_scaler.update()
    assert torch.equal(module.linear.weight, model.weight)
    assert torch.equal(module.linear.bias, model.bias)
    # six clean steps with growth_interval=2: the scale doubled three times, in both
    assert trainer.precision.scaler.get_scale() == raw_scaler.get_scale() == 2.0**13
