"""requires_grad before, inside and after toggling; errors; sync suppression; Fabric loops."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from loopkit import Fabric, SingleDeviceStrategy, registry
from loopkit_toggling import Toggling


class Pair(nn.Module):
    """Two optimizers' worth of parameters: exclusive to each, one shared, one frozen, one free."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)
        self.shared = nn.Parameter(torch.ones(2))
        self.a_frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.b_frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.no_optimizer = nn.Parameter(torch.ones(2))

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        opt_a = torch.optim.SGD([*self.a.parameters(), self.shared, self.a_frozen], lr=0.1)
        opt_b = torch.optim.SGD([*self.b.parameters(), self.shared, self.b_frozen], lr=0.1)
        return opt_a, opt_b


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def expected_a_toggled(before: dict[str, bool]) -> dict[str, bool]:
    out = dict(before)
    out["b.weight"] = out["b.bias"] = False  # exclusive to the other optimizer
    out["b_frozen"] = False
    return out


def test_flags_inside_and_after_toggling_exclusive_shared_frozen_and_free() -> None:
    model = Pair()
    opt_a, opt_b = model.optimizers()
    model.no_optimizer.requires_grad_(False)  # not any optimizer's: must stay as it is
    before = flags(model)
    tog = Toggling()
    with tog.toggled(model, opt_a, [opt_a, opt_b]):
        inside = flags(model)
        assert tog.is_toggled(opt_a) and not tog.is_toggled(opt_b)
    assert inside == expected_a_toggled(before)
    assert inside["shared"] is True and inside["a.weight"] is True
    assert inside["a_frozen"] is False  # the current optimizer keeps its own frozen flag
    assert flags(model) == before
    assert not tog.is_toggled()

    with tog.toggled(model, opt_b, [opt_a, opt_b]):
        inside_b = flags(model)
    assert inside_b["a.weight"] is False and inside_b["a_frozen"] is False
    assert inside_b["b.weight"] is True and inside_b["shared"] is True
    assert inside_b["b_frozen"] is False
    assert flags(model) == before


def test_flags_restored_when_the_block_raises() -> None:
    model = Pair()
    opt_a, opt_b = model.optimizers()
    before = flags(model)
    tog = Toggling()
    with pytest.raises(ZeroDivisionError), tog.toggled(model, opt_a, [opt_a, opt_b]):
        assert flags(model) == expected_a_toggled(before)
        # An inner paired toggle that never got untoggled is unwound as well.
        tog.toggle_optimizer(model, opt_b, [opt_a, opt_b])
        _ = 1 / 0
    assert flags(model) == before
    assert not tog.is_toggled()


def test_paired_toggle_untoggle_and_nesting() -> None:
    model = Pair()
    opt_a, opt_b = model.optimizers()
    before = flags(model)
    tog = Toggling()
    tog.toggle_optimizer(model, opt_a, [opt_a, opt_b])
    state_a = flags(model)
    assert state_a == expected_a_toggled(before)
    # B inside A trains with the flags from before any toggle, not with A's.
    tog.toggle_optimizer(model, opt_b, [opt_a, opt_b])
    inner = flags(model)
    assert inner["b.weight"] is True and inner["a.weight"] is False and inner["shared"] is True
    with pytest.raises(RuntimeError, match="untoggle SGD first"):
        tog.untoggle_optimizer(model, opt_a)
    tog.untoggle_optimizer(model, opt_b)
    assert flags(model) == state_a
    tog.untoggle_optimizer(model, opt_a)
    assert flags(model) == before


def test_untoggle_without_toggle_is_a_clear_error() -> None:
    model = Pair()
    opt_a, _ = model.optimizers()
    with pytest.raises(RuntimeError, match=r"untoggle_optimizer\(SGD\).*not toggled"):
        Toggling().untoggle_optimizer(model, opt_a)


def test_bad_input_errors_name_what_was_passed() -> None:
    model = Pair()
    opt_a, opt_b = model.optimizers()
    tog = Toggling()
    with pytest.raises(TypeError, match="needs all_optimizers"):
        tog.toggle_optimizer(model, opt_a, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optimizer must hold torch optimizers.*got str"):
        tog.toggle_optimizer(model, "adam", [opt_a])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"module must be the model.*got int"):
        tog.toggle_optimizer(3, opt_a, [opt_a, opt_b])  # type: ignore[arg-type]
    assert flags(model)["b.weight"] is True  # nothing was changed by the failed calls


def test_fabric_wrappers_are_accepted_and_registry_name_resolves() -> None:
    assert isinstance(registry().create("subscriber", "toggling"), Toggling)
    fabric = Fabric(accelerator="cpu", plugins=["toggling"])
    tog = fabric.get_plugin("toggling")
    assert isinstance(tog, Toggling)
    raw = Pair()
    before = flags(raw)
    model, opt_a, opt_b = fabric.setup(raw, *raw.optimizers())
    with tog.toggled(model, opt_a, [opt_a, opt_b]):
        assert flags(raw) == expected_a_toggled(before)
    assert flags(raw) == before


def test_on_exception_restores_a_paired_toggle_left_open() -> None:
    fabric = Fabric(accelerator="cpu", plugins=["toggling"])
    raw = Pair()
    before = flags(raw)
    model, opt_a, opt_b = fabric.setup(raw, *raw.optimizers())
    fabric.get_plugin("toggling").toggle_optimizer(model, opt_a, [opt_a, opt_b])
    assert flags(raw) != before
    fabric.call("on_exception", trainer=None, module=raw, exception=RuntimeError("boom"))
    assert flags(raw) == before


class SyncRecordingStrategy(SingleDeviceStrategy):
    """Records every no_backward_sync block and each backward run outside one."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = 0
        self.entered: list[nn.Module] = []
        self.synced_backwards = 0
        self.blocked_backwards = 0

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True):  # type: ignore[override]
        if not enabled:
            yield
            return
        self.entered.append(module)
        self.blocked += 1
        try:
            yield
        finally:
            self.blocked -= 1

    def backward(self, loss, module, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.blocked:
            self.blocked_backwards += 1
        else:
            self.synced_backwards += 1
        super().backward(loss, module, *args, **kwargs)


@pytest.mark.parametrize("sync_grad", [True, False])
def test_sync_grad_false_suppresses_gradient_sync_in_the_block(sync_grad: bool) -> None:
    strategy = SyncRecordingStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy, plugins=["toggling"])
    raw = Pair()
    model, opt_a, opt_b = fabric.setup(raw, *raw.optimizers())
    tog = fabric.get_plugin("toggling")
    with tog.toggled(model, opt_a, [opt_a, opt_b], sync_grad=sync_grad):
        fabric.backward(model.a(torch.ones(1, 2)).sum())
    fabric.backward(model.a(torch.ones(1, 2)).sum())  # after the block: synchronised again
    assert strategy.blocked == 0
    if sync_grad:
        assert (strategy.synced_backwards, strategy.blocked_backwards) == (2, 0)
        assert strategy.entered == []
    else:
        assert (strategy.synced_backwards, strategy.blocked_backwards) == (1, 1)
        assert strategy.entered == [model.forward_module]


def test_sync_grad_false_with_the_users_module_finds_its_wrapper() -> None:
    # The Trainer passes the user's own module (not the FabricModule) and the fabric.
    strategy = SyncRecordingStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    raw = Pair()
    model, opt_a, opt_b = fabric.setup(raw, *raw.optimizers())
    tog = Toggling()
    with tog.toggled(raw, opt_a, [opt_a, opt_b], sync_grad=False, fabric=fabric):
        assert strategy.blocked == 1
    assert strategy.entered == [model.forward_module]
