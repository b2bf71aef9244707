"""Fabric's hooks and ``fabric.call``: what fires when, with what, and who receives it."""

from __future__ import annotations

import contextlib
import typing as t

import pytest
import torch
from torch import nn

from loopkit import Fabric, HookError, Phase
from loopkit.hooks import default_hook
from loopkit.plugins import Plugin
from loopkit.precision import Precision


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


class Recorder:
    """Receives every hook Fabric fires, recording its name and what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, t.Any]]] = []

    def on_after_setup(self, fabric: Fabric, module: nn.Module) -> None:
        self.events.append(("on_after_setup", {"fabric": fabric, "module": module}))

    def on_before_zero_grad(self, **kwargs: t.Any) -> None:
        self.events.append(("on_before_zero_grad", kwargs))

    def on_before_backward(self, **kwargs: t.Any) -> None:
        self.events.append(("on_before_backward", kwargs))

    def on_after_backward(self, **kwargs: t.Any) -> None:
        self.events.append(("on_after_backward", kwargs))

    def on_before_optimizer_step(self, **kwargs: t.Any) -> None:
        self.events.append(("on_before_optimizer_step", kwargs))

    def on_optimizer_step(self, **kwargs: t.Any) -> None:
        self.events.append(("on_optimizer_step", kwargs))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def test_one_step_fires_the_step_hooks_in_order_with_their_arguments() -> None:
    recorder = Recorder()
    fabric = Fabric(accelerator="cpu", callbacks=[recorder])
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    model, optimizer = fabric.setup(net, opt)
    loss = model(torch.randn(2, 3)).sum()
    optimizer.zero_grad()
    fabric.backward(loss)
    optimizer.step()
    assert recorder.names == [
        "on_after_setup",
        "on_before_zero_grad",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_optimizer_step",
    ]
    setup, zero, before, after, before_step, step = (kw for _, kw in recorder.events)
    assert setup == {"fabric": fabric, "module": net}
    common = {"fabric": fabric, "trainer": None, "module": net}
    assert zero == {**common, "optimizer": opt}
    assert before == {**common, "loss": loss}
    assert after == common
    assert before_step == step == {**common, "optimizer": opt}


def test_hooks_receive_the_trainer_a_trainer_set() -> None:
    seen: list[object] = []

    class Watch:
        def on_before_backward(self, trainer: object) -> None:
            seen.append(trainer)

    fabric = Fabric(accelerator="cpu", callbacks=[Watch()])
    model = fabric.setup(_net())
    trainer = object()
    fabric._trainer = trainer
    fabric.backward(model(torch.randn(1, 3)).sum())
    assert seen == [trainer]


def test_pl_module_is_accepted_for_module() -> None:
    seen: list[nn.Module] = []

    class LightningStyle:
        def on_after_backward(self, trainer: object, pl_module: nn.Module) -> None:
            seen.append(pl_module)

    fabric = Fabric(accelerator="cpu", callbacks=[LightningStyle()])
    net = _net()
    model = fabric.setup(net)
    fabric.backward(model(torch.randn(1, 3)).sum())
    assert seen == [net]


def test_closure_runs_before_on_before_optimizer_step() -> None:
    order: list[str] = []

    class Watch:
        def on_before_optimizer_step(self, module: nn.Module) -> None:
            order.append("hook:" + ("grads" if module[0].weight.grad is not None else "none"))

        def on_optimizer_step(self) -> None:
            order.append("stepped")

    fabric = Fabric(accelerator="cpu", callbacks=[Watch()])
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))

    def closure() -> torch.Tensor:
        order.append("closure")
        optimizer.zero_grad()
        loss = model(torch.randn(2, 3)).sum()
        fabric.backward(loss)
        return loss

    optimizer.step(closure)
    assert order == ["closure", "hook:grads", "stepped"]


class HalvingScaler(Precision):
    """Scales the loss by 8 and unscales the gradients, as a grad scaler does."""

    needs_fabric_backward = True

    def __init__(self) -> None:
        self.unscaled: set[int] = set()

    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        self.unscaled.clear()
        return loss * 8

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if id(optimizer) in self.unscaled:
            return
        self.unscaled.add(id(optimizer))
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad /= 8


def test_on_before_optimizer_step_sees_unscaled_gradients() -> None:
    seen: list[torch.Tensor] = []

    class Watch:
        def on_after_backward(self, module: nn.Module) -> None:
            seen.append(module[0].weight.grad.clone())

        def on_before_optimizer_step(self, module: nn.Module) -> None:
            seen.append(module[0].weight.grad.clone())

    fabric = Fabric(accelerator="cpu", precision=HalvingScaler(), callbacks=[Watch()])
    net, plain = _net(), _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    x = torch.randn(2, 3)
    fabric.backward(model(x).sum())
    optimizer.step()
    plain(x).sum().backward()
    assert torch.equal(seen[0], plain[0].weight.grad * 8)  # after backward: still scaled
    assert torch.equal(seen[1], plain[0].weight.grad)


def test_step_without_fabric_backward_under_a_scaler_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu", precision=HalvingScaler())
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(RuntimeError, match=r"replace loss\.backward\(\) with fabric\.backward"):
        optimizer.step()


def test_callbacks_connected_after_setup_are_heard() -> None:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(1, 3)).sum())  # nobody listens yet
    recorder = Recorder()
    subscription = fabric.bus.connect(recorder)
    fabric.backward(model(torch.randn(1, 3)).sum())
    optimizer.step()
    assert recorder.names == [
        "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_optimizer_step"
    ]  # fmt: skip
    subscription.remove()
    fabric.backward(model(torch.randn(1, 3)).sum())
    assert len(recorder.events) == 4


def test_a_callback_requiring_what_a_fabric_hook_does_not_give_is_refused() -> None:
    class Bad:
        def on_after_backward(self, loss: torch.Tensor) -> None: ...

    with pytest.raises(HookError, match=r"Bad\.on_after_backward requires parameter\(s\) 'loss'"):
        Fabric(accelerator="cpu", callbacks=[Bad()])


# -- the module as a receiver ----------------------------------------------------------------------


class Base(nn.Module):
    """A library base class declaring hooks for discoverability (defaults do not subscribe)."""

    @default_hook
    def on_after_backward(self) -> None: ...

    @default_hook
    def on_optimizer_step(self) -> None: ...


class HookedNet(Base):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def on_after_backward(self) -> None:
        self.seen.append("on_after_backward")

    def on_epoch_report(self, epoch: int) -> str:
        self.seen.append(f"report:{epoch}")
        return "reported"

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        return self(batch).sum()


def test_a_set_up_module_receives_hooks_through_its_own_methods() -> None:
    callback_first: list[str] = []

    class Callback:
        def on_epoch_report(self, epoch: int) -> str:
            callback_first.append("callback")
            return "callback"

    fabric = Fabric(accelerator="cpu", callbacks=[Callback()])
    net = HookedNet()
    model = fabric.setup(net)
    fabric.backward(model(torch.randn(1, 3)).sum())
    results = fabric.call("on_epoch_report", epoch=3)
    assert net.seen == ["on_after_backward", "report:3"]
    assert [r for _, r in results] == ["callback", "reported"]  # callbacks first, then modules
    assert results[1][0] is net


def test_module_methods_that_are_not_overrides_do_not_receive_hooks() -> None:
    fabric = Fabric(accelerator="cpu")
    net = HookedNet()
    model = fabric.setup(net)
    optimizer = fabric.setup_optimizers(torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(1, 3)).sum())
    optimizer.step()  # Base.on_optimizer_step is a default: not subscribed
    assert fabric.call("eval") == []  # nn.Module's own methods are not hooks
    assert net.training
    assert fabric.call("forward", torch.ones(1, 3)) == []
    assert len(fabric.call("training_step", batch=torch.ones(1, 3))) == 1  # the user's own


def test_a_module_hook_with_a_bad_signature_is_refused_at_setup() -> None:
    class Bad(nn.Module):
        def on_before_backward(self, gradient_scale: float) -> None: ...

    fabric = Fabric(accelerator="cpu")
    with pytest.raises(HookError, match="gradient_scale"):
        fabric.setup(Bad())


# -- call ---------------------------------------------------------------------------------------


def test_call_passes_each_callback_the_arguments_it_names() -> None:
    got: list[tuple[str, t.Any]] = []

    class A:
        def on_thing(self, x: int) -> int:
            got.append(("A", x))
            return x + 1

    class B:
        def on_thing(self, x: int, y: int = 0) -> int:
            got.append(("B", (x, y)))
            return x + y

    class C:
        def on_other(self) -> None: ...

    a, b = A(), B()
    fabric = Fabric(accelerator="cpu", callbacks=[a, b, C()])
    assert fabric.call("on_thing", x=1, y=5) == [(a, 2), (b, 6)]
    assert got == [("A", 1), ("B", (1, 5))]
    assert fabric.call("undefined") == []


def test_call_with_a_missing_argument_names_it() -> None:
    class A:
        def on_thing(self, x: int) -> None: ...

    fabric = Fabric(accelerator="cpu", callbacks=[A()])
    with pytest.raises(HookError, match="'x'"):
        fabric.call("on_thing", y=1)


def test_an_error_raised_by_a_callback_names_it() -> None:
    class Failing:
        def on_thing(self) -> None:
            raise KeyError("inside")

    fabric = Fabric(accelerator="cpu", callbacks=[Failing()])
    with pytest.raises(KeyError) as info:
        fabric.call("on_thing")
    assert any("Failing.on_thing" in note for note in getattr(info.value, "__notes__", []))


# -- phases and plugins ----------------------------------------------------------------------------


def test_a_backward_phase_context_may_replace_the_loss() -> None:
    seen: list[torch.Tensor] = []

    class Watch:
        def on_before_backward(self, loss: torch.Tensor) -> None:
            seen.append(loss)

    fabric = Fabric(accelerator="cpu", callbacks=[Watch()])
    net, plain = _net(), _net()
    model = fabric.setup(net)

    @contextlib.contextmanager
    def halve(phase: Phase) -> t.Iterator[None]:
        phase.loss = t.cast(torch.Tensor, phase.loss) / 2
        yield

    handle = fabric.wrap_phase("backward", halve)
    x = torch.randn(2, 3)
    loss = model(x).sum()
    fabric.backward(loss)
    (plain(x).sum() / 2).backward()
    assert torch.equal(seen[0], loss / 2)
    assert torch.equal(net[0].weight.grad, plain[0].weight.grad)
    handle.remove()
    fabric.backward(model(x).sum())
    assert torch.equal(net[0].weight.grad, plain[0].weight.grad * 3)


def test_an_optimizer_step_phase_wraps_the_step() -> None:
    order: list[str] = []

    @contextlib.contextmanager
    def around(phase: Phase) -> t.Iterator[None]:
        order.append(f"enter:{type(phase.optimizer).__name__}")
        yield
        order.append("exit")

    class Watch:
        def on_before_optimizer_step(self) -> None:
            order.append("before")

        def on_optimizer_step(self) -> None:
            order.append("after")

    fabric = Fabric(accelerator="cpu", callbacks=[Watch()])
    fabric.wrap_phase("optimizer_step", around)
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(1, 3)).sum())
    optimizer.step()
    assert order == ["before", "enter:SGD", "exit", "after"]
    with pytest.raises(ValueError, match="unknown phase 'loss'"):
        fabric.wrap_phase("loss", around)  # type: ignore[arg-type]


def test_a_subscriber_plugin_is_attached_and_hears_hooks() -> None:
    class Counting(Plugin):
        def __init__(self) -> None:
            self.host: Fabric | None = None
            self.steps = 0

        def attach(self, host: Fabric) -> None:
            self.host = host

        def on_optimizer_step(self) -> None:
            self.steps += 1

    plugin = Counting()
    fabric = Fabric(accelerator="cpu", plugins=[plugin])
    assert plugin.host is fabric and fabric.plugins == [plugin]
    assert fabric.get_plugin(Counting) is plugin
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(1, 3)).sum())
    optimizer.step()
    assert plugin.steps == 1


def test_a_plugin_given_as_a_callback_is_attached_too() -> None:
    class Watching(Plugin):
        host: Fabric | None = None

        def attach(self, host: Fabric) -> None:
            self.host = host

    plugin = Watching()
    fabric = Fabric(accelerator="cpu", callbacks=[plugin])
    assert plugin.host is fabric
    assert fabric.callbacks == [plugin]


def test_a_misspelt_hook_method_on_a_module_gets_a_warning() -> None:
    class Typo(nn.Linear):
        def on_train_epoch_ends(self) -> None: ...

    with pytest.warns(UserWarning, match="did you mean 'on_train_epoch_end'"):
        Fabric(accelerator="cpu").setup(Typo(2, 1))
