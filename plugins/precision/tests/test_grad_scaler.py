"""16-mixed: the grad scaler against a hand-written GradScaler loop; clipping, hooks, state."""

from __future__ import annotations

import pytest
import torch
from conftest import Probe, regression_data
from torch import nn
from torch.nn import functional as F

from loopkit import Fabric
from loopkit_precision import FP16MixedPrecision


def make_scaler(**kwargs):
    kwargs.setdefault("init_scale", 2.0**10)
    return torch.amp.GradScaler("cpu", **kwargs)


class InjectInf:
    """A callback that puts an inf into the first weight gradient on the listed steps."""

    def __init__(self, steps):
        self.steps = set(steps)
        self.backwards = 0

    def on_after_backward(self, module):
        if self.backwards in self.steps:
            module.linear.weight.grad[0, 0] = float("inf")
        self.backwards += 1


class RecordGradients:
    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, fabric, module):
        self.grads.append(module.linear.weight.grad.clone())


def manual_loop(steps, *, inf_at=(), max_norm=None, scaler_kwargs=None, lr=0.1):
    """What the 16-mixed precision is defined as, written with torch.amp by hand."""
    torch.manual_seed(0)
    x, y = regression_data()
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = make_scaler(**(scaler_kwargs or {}))
    weights, scales, grads = [], [], []
    for step in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x.half())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        if step in inf_at:
            model.linear.weight.grad[0, 0] = float("inf")
        scaler.unscale_(optimizer)
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        grads.append(model.linear.weight.grad.clone())
        scaler.step(optimizer)
        scaler.update()
        weights.append(model.linear.weight.detach().clone())
        scales.append(scaler.get_scale())
    return model, weights, scales, grads


def fabric_loop(steps, *, inf_at=(), max_norm=None, scaler_kwargs=None, lr=0.1, callbacks=()):
    torch.manual_seed(0)
    x, y = regression_data()
    precision = FP16MixedPrecision(scaler=make_scaler(**(scaler_kwargs or {})))
    recorder = RecordGradients()
    fabric = Fabric(
        accelerator="cpu", precision=precision, callbacks=[InjectInf(inf_at), recorder, *callbacks]
    )
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer = fabric.setup(model, optimizer)
    weights, scales = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        fabric.backward(loss)
        if max_norm is not None:
            fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
        optimizer.step()
        weights.append(model.linear.weight.detach().clone())
        scales.append(fabric.precision.scaler.get_scale())
    return fabric, model, weights, scales, recorder.grads


def test_an_inf_gradient_skips_exactly_that_step_and_halves_the_scale():
    _, model, weights, scales, _ = fabric_loop(6, inf_at={3})
    raw, raw_weights, raw_scales, _ = manual_loop(6, inf_at={3})
    assert scales == raw_scales
    assert scales[3] == scales[2] / 2
    assert scales[:3] == [2.0**10] * 3 and scales[4:] == [2.0**9] * 2
    # step 3 was skipped: the weights after it equal the weights before it; the others moved
    assert torch.equal(weights[3], weights[2])
    for before, after in [(weights[1], weights[2]), (weights[3], weights[4])]:
        assert not torch.equal(before, after)
    for ours, theirs in zip(weights, raw_weights):
        assert torch.equal(ours, theirs)
    assert torch.equal(model.linear.bias, raw.linear.bias)


def test_clip_gradients_sees_unscaled_gradients():
    # A max_norm well below the true gradient norm: clipping scaled gradients would give other
    # weights (and clipping already-unscaled ones twice would too).
    _, model, weights, _, grads = fabric_loop(8, max_norm=0.05)
    raw, raw_weights, _, raw_grads = manual_loop(8, max_norm=0.05)
    assert all(torch.linalg.vector_norm(g) <= 0.05 + 1e-6 for g in grads)
    for ours, theirs in zip(grads, raw_grads):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(weights, raw_weights):
        assert torch.equal(ours, theirs)
    assert torch.equal(model.linear.bias, raw.linear.bias)


def test_on_before_optimizer_step_sees_unscaled_gradients():
    _, _, _, _, grads = fabric_loop(3)
    _, _, _, raw_grads = manual_loop(3)
    assert len(grads) == 3
    for ours, theirs in zip(grads, raw_grads):
        assert torch.equal(ours, theirs)
    # true gradients of this task are of order one, scaled ones of order 2**10
    assert float(torch.linalg.vector_norm(grads[0])) < 100


def test_clip_with_an_inf_gradient_skips_the_step_like_the_manual_loop():
    _, _, weights, scales, _ = fabric_loop(4, inf_at={1}, max_norm=0.05)
    _, raw_weights, raw_scales, _ = manual_loop(4, inf_at={1}, max_norm=0.05)
    assert scales == raw_scales == [2.0**10, 2.0**9, 2.0**9, 2.0**9]
    for ours, theirs in zip(weights, raw_weights):
        assert torch.equal(ours, theirs)


def test_scale_grows_after_growth_interval_clean_steps():
    _, _, weights, scales, _ = fabric_loop(5, scaler_kwargs={"growth_interval": 2})
    _, raw_weights, raw_scales, _ = manual_loop(5, scaler_kwargs={"growth_interval": 2})
    assert scales == raw_scales == [2.0**10, 2.0**11, 2.0**11, 2.0**12, 2.0**12]
    for ours, theirs in zip(weights, raw_weights):
        assert torch.equal(ours, theirs)


def test_closure_step_matches_the_manual_loop():
    torch.manual_seed(0)
    x, y = regression_data()
    fabric = Fabric(
        accelerator="cpu",
        precision=FP16MixedPrecision(scaler=make_scaler()),
        callbacks=[InjectInf({2})],
    )
    model = Probe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    returned = []
    for _ in range(5):

        def closure():
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            fabric.backward(loss)
            return loss

        returned.append(optimizer.step(closure))
    _, raw_weights, raw_scales, _ = manual_loop(5, inf_at={2})
    assert torch.equal(model.linear.weight, raw_weights[-1])
    assert fabric.precision.scaler.get_scale() == raw_scales[-1]
    assert all(isinstance(r, torch.Tensor) and r.dtype == torch.float32 for r in returned)


def test_two_optimizers_after_one_backward_unscale_with_the_same_scale():
    # One backward, two optimizers (two halves of a model). The scale must not change between
    # the two steps, even on a step where the first optimizer overflows.
    def build():
        torch.manual_seed(0)
        return nn.Linear(4, 4), nn.Linear(4, 1)

    x, y = regression_data()

    def run_fabric():
        fabric = Fabric(accelerator="cpu", precision=FP16MixedPrecision(scaler=make_scaler()))
        a, b = build()
        a, opt_a = fabric.setup(a, torch.optim.SGD(a.parameters(), lr=0.05))
        b, opt_b = fabric.setup(b, torch.optim.SGD(b.parameters(), lr=0.05))
        for step in range(4):
            opt_a.zero_grad()
            opt_b.zero_grad()
            fabric.backward(F.mse_loss(b(a(x)), y), model=a)
            if step == 1:
                a.weight.grad[0, 0] = float("inf")
            opt_a.step()
            opt_b.step()
        return a, b, fabric.precision.scaler.get_scale()

    def run_manual():
        a, b = build()
        opt_a = torch.optim.SGD(a.parameters(), lr=0.05)
        opt_b = torch.optim.SGD(b.parameters(), lr=0.05)
        scaler = make_scaler()
        for step in range(4):
            opt_a.zero_grad()
            opt_b.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                out = b(a(x.half()))
            scaler.scale(F.mse_loss(out.float(), y)).backward()
            if step == 1:
                a.weight.grad[0, 0] = float("inf")
            scaler.step(opt_a)
            scaler.step(opt_b)
            scaler.update()  # once per iteration, after every optimizer stepped
        return a, b, scaler.get_scale()

    a, b, scale = run_fabric()
    ra, rb, raw_scale = run_manual()
    assert scale == raw_scale == 2.0**9
    for ours, theirs in [(a.weight, ra.weight), (b.weight, rb.weight), (b.bias, rb.bias)]:
        assert torch.equal(ours, theirs)


def _continue(fabric, model, optimizer, steps):
    x, y = regression_data()
    for _ in range(steps):
        optimizer.zero_grad()
        fabric.backward(F.mse_loss(model(x), y))
        optimizer.step()
    return fabric.precision.scaler.get_scale()


def _resumed(path, load_scaler):
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    torch.manual_seed(1)  # other initial weights: the checkpoint must bring them back
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.01))
    state = {"model": model, "optimizer": optimizer}
    if load_scaler:
        state["scaler"] = fabric.precision
    extra = fabric.load(path, state, strict=False)
    return fabric, model, optimizer, extra


def test_checkpoint_round_trip_restores_scale_and_growth_tracker(tmp_path):
    # Step 1 overflows (scale 2**10 -> 2**9); steps 2..5 are clean: the tracker counts 4 of the
    # 5 clean steps the scale needs to grow.
    torch.manual_seed(0)
    precision = FP16MixedPrecision(scaler=make_scaler(growth_interval=5))
    fabric = Fabric(accelerator="cpu", precision=precision, callbacks=[InjectInf({1})])
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=0.01))
    assert _continue(fabric, model, optimizer, 6) == 2.0**9
    path = tmp_path / "ckpt.pt"
    state = {"model": model, "optimizer": optimizer, "scaler": fabric.precision, "step": 6}
    fabric.save(path, state)
    saved = torch.load(path, weights_only=True)["scaler"]
    assert (saved["scale"], saved["_growth_tracker"], saved["growth_interval"]) == (2.0**9, 4, 5)

    resumed, r_model, r_optimizer, extra = _resumed(path, load_scaler=True)
    assert extra == {"step": 6}
    state = resumed.precision.scaler.state_dict()
    assert (state["scale"], state["_growth_tracker"], state["growth_interval"]) == (2.0**9, 4, 5)

    # Both runs go on: one clean step makes the fifth, and the scale grows in both.
    assert _continue(fabric, model, optimizer, 3) == 2.0**10
    assert _continue(resumed, r_model, r_optimizer, 3) == 2.0**10
    for ours, theirs in zip(model.parameters(), r_model.parameters()):
        assert torch.equal(ours, theirs)

    # Without the scaler's state the resumed run starts over at 2**16, where this task's
    # gradients overflow: its first step is skipped and it ends elsewhere.
    fresh, f_model, f_optimizer, _ = _resumed(path, load_scaler=False)
    assert _continue(fresh, f_model, f_optimizer, 3) == 2.0**15
    assert not torch.equal(f_model.linear.weight, model.linear.weight)


def test_scaler_state_loads_from_a_gradscaler_saved_directly(tmp_path):
    fabric, _, _, scales, _ = fabric_loop(3, inf_at={0})
    path = tmp_path / "ckpt.pt"
    fabric.save(path, {"scaler": fabric.precision.scaler})
    other = Fabric(accelerator="cpu", precision="16")
    other.load(path, {"scaler": other.precision.scaler})
    assert other.precision.scaler.get_scale() == scales[-1] == 2.0**9


def test_loading_an_empty_precision_state_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    Fabric(accelerator="cpu", precision="bf16-mixed").save(
        path, {"scaler": Fabric(accelerator="cpu", precision="bf16-mixed").precision}
    )
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    with pytest.raises(ValueError, match=r"empty precision state.*without a grad scaler"):
        fabric.load(path, {"scaler": fabric.precision})


def test_saved_state_is_the_scaler_state_after_the_last_update(tmp_path):
    fabric, *_ = fabric_loop(3, inf_at={2}, scaler_kwargs={"growth_interval": 50})
    # The update that follows the last (skipped) step is applied when the state is read.
    path = tmp_path / "ckpt.pt"
    fabric.save(path, {"scaler": fabric.precision})
    saved = torch.load(path, weights_only=True)["scaler"]
    assert saved["scale"] == 2.0**9
    assert saved["_growth_tracker"] == 0
    assert saved["growth_interval"] == 50


def test_lbfgs_is_refused_with_a_clear_error():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.LBFGS(model.parameters()))
    x, y = regression_data()
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        fabric.backward(loss)
        return loss

    with pytest.raises(TypeError, match=r"LBFGS.*16-mixed does not support it.*bf16-mixed"):
        optimizer.step(closure)
    assert calls == []  # refused before anything ran


def test_loss_backward_instead_of_fabric_backward_is_a_clear_error():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = regression_data()
    with pytest.raises(RuntimeError, match=r"fabric.backward\(loss\)"):
        F.mse_loss(model(x), y).backward()
        optimizer.step()


def test_a_second_step_without_a_new_backward_is_a_clear_error():
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = regression_data()
    fabric.backward(F.mse_loss(model(x), y))
    optimizer.step()
    F.mse_loss(model(x), y).backward()  # the user forgot fabric.backward here
    with pytest.raises(RuntimeError, match=r"SGD.step\(\) ran again without a fabric.backward"):
        optimizer.step()


def test_a_step_without_gradients_does_nothing():
    # A closure whose training step produced no loss: nothing to unscale or step.
    fabric = Fabric(accelerator="cpu", precision=FP16MixedPrecision(scaler=make_scaler()))
    model = Probe()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = regression_data()
    fabric.backward(F.mse_loss(model(x), y))
    optimizer.zero_grad()
    assert optimizer.step(lambda: None) is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    fabric.backward(F.mse_loss(model(x), y))
    optimizer.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_scaler_argument_must_be_a_gradscaler():
    with pytest.raises(TypeError, match=r"takes a torch\.amp\.GradScaler, got dict"):
        FP16MixedPrecision(scaler={"init_scale": 2.0})
