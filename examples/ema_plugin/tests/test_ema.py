"""The ema plugin: found by name, averages as AveragedModel does by hand, validates with the
average, ends fit with the trained weights, and keeps its state in checkpoints.

These tests need only loopkit and this plugin installed; they use loopkit's pytest helpers
(loopkit.testing) for the model, the data and the hook recorder.
"""

from __future__ import annotations

import ast
import copy
import pathlib
import typing as t

import pytest
import torch
from loopkit_ema_example import EMA
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import loopkit
from loopkit import testing
from loopkit.plugins import registry

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "loopkit_ema_example"


def quiet_trainer(**kwargs: t.Any) -> loopkit.Trainer:
    for key in ("logger", "enable_progress_bar", "enable_model_summary", "enable_checkpointing"):
        kwargs.setdefault(key, False)
    kwargs.setdefault("accelerator", "cpu")
    return loopkit.Trainer(**kwargs)


def by_hand(
    net: nn.Module,
    loader: t.Any,
    epochs: int,
    decay: float,
    every: int = 1,
    start: int = 0,
    lr: float = 0.1,
) -> AveragedModel:
    """Train ``net`` in place with plain PyTorch; the AveragedModel updated by hand."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    avg = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            if step >= start and (step - start) % every == 0:
                avg.update_parameters(net)
            step += 1
    return avg


def equal(a: t.Iterable[torch.Tensor], b: t.Iterable[torch.Tensor]) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


# -- found by name ------------------------------------------------------------------------------


def test_found_by_name_in_fabric_and_trainer() -> None:
    assert "ema" in registry()
    made = registry().create("subscriber", "ema", decay=0.5)
    assert isinstance(made, EMA) and made.decay == 0.5 and made.plugin_name == "ema"
    fabric = loopkit.Fabric(accelerator="cpu", plugins=["ema"])
    assert isinstance(fabric.get_plugin("ema"), EMA)
    trainer = quiet_trainer(max_epochs=1, plugins=["ema"])
    assert isinstance(trainer.fabric.get_plugin("ema"), EMA)


def private_uses(sources: list[pathlib.Path]) -> list[str]:
    """Every use of a loopkit name or module path that starts with "_" in ``sources``."""
    offences = []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        aliases = {"loopkit"}  # names bound to loopkit modules in this file
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "loopkit":
                        if any(part.startswith("_") for part in alias.name.split(".")):
                            offences.append(f"{path.name}: import {alias.name}")
                        aliases.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] != "loopkit":
                    continue
                if any(part.startswith("_") for part in module.split(".")):
                    offences.append(f"{path.name}: from {module} import ...")
                for alias in node.names:
                    if alias.name.startswith("_"):
                        offences.append(f"{path.name}: from {module} import {alias.name}")
        for node in ast.walk(tree):  # loopkit.x._y, through any name bound to a loopkit module
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    offences.append(f"{path.name}: {ast.unparse(node)}")
    return offences


def test_imports_nothing_private_from_loopkit() -> None:
    sources = sorted(PACKAGE.glob("*.py"))
    assert [p.name for p in sources] == ["__init__.py", "ema.py"]
    assert private_uses(sources) == []


def test_the_private_import_check_finds_each_kind_of_offence(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import loopkit\nimport loopkit._log\nfrom loopkit.fabric import _as_list, Fabric\n"
        "from loopkit._log import logger\nimport loopkit.fabric as lf\n"
        "x = loopkit.fabric._create\ny = lf._EMBEDDED\nz = loopkit.Fabric\n"
    )
    assert private_uses([bad]) == [
        "bad.py: import loopkit._log",
        "bad.py: from loopkit.fabric import _as_list",
        "bad.py: from loopkit._log import ...",
        "bad.py: loopkit.fabric._create",
        "bad.py: lf._EMBEDDED",
    ]


# -- averaging ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("every", "start"), [(1, 0), (2, 1)])
def test_fabric_loop_matches_averaged_model_by_hand(every: int, start: int) -> None:
    loader = testing.synthetic_loader(n=48, batch_size=8)
    reference = testing.tiny_model()
    expected = by_hand(reference, loader, epochs=2, decay=0.9, every=every, start=start)

    ema = EMA(decay=0.9, update_every_n_steps=every, update_starting_at_step=start)
    fabric = loopkit.Fabric(accelerator="cpu", plugins=[ema])
    net = testing.tiny_model()
    model, opt = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            fabric.backward(nn.functional.mse_loss(model(x), y))
            opt.step()

    assert equal(net.parameters(), reference.parameters())  # the plugin leaves training alone
    assert equal(tensors(ema.averaged_model), tensors(expected))
    assert int(ema.averaged_model.n_averaged) == int(expected.n_averaged)
    assert ema.averaged_model_of(model) is ema.averaged_model_of(net) is ema.averaged_model


def test_trainer_validates_with_the_average_and_ends_with_trained_weights() -> None:
    seen: list[list[torch.Tensor]] = []

    class Recording(testing.TinyModule):
        def validation_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 0:
                seen.append([p.detach().clone() for p in self.net.parameters()])
            return super().validation_step(batch, batch_idx)

    train, val = testing.synthetic_loader(n=32), testing.synthetic_loader(n=8, seed=1)
    module = Recording()
    trainer = quiet_trainer(max_epochs=2, plugins=[EMA(decay=0.8)])
    trainer.fit(module, train, val)

    reference = testing.tiny_model()
    after_one = by_hand(copy.deepcopy(reference), train, epochs=1, decay=0.8)
    after_two = by_hand(reference, train, epochs=2, decay=0.8)
    assert equal(seen[0], after_one.module.parameters())  # validation ran on the average
    assert equal(seen[1], after_two.module.parameters())
    assert equal(module.net.parameters(), reference.parameters())  # fit ends trained
    ema = trainer.fabric.get_plugin("ema")
    assert equal(tensors(ema.averaged_model.module.net), tensors(after_two.module))
    # The logged validation loss is the averaged model's.
    x, y = next(iter(val))
    with torch.no_grad():
        loss = nn.functional.mse_loss(after_two.module(x), y)
    assert torch.allclose(trainer.callback_metrics["val_loss"], loss, rtol=0, atol=1e-7)


def test_callbacks_see_the_average_for_the_whole_validation_run() -> None:
    weights: dict[str, torch.Tensor] = {}

    class Peek(loopkit.Callback):
        def on_validation_start(self, trainer: t.Any, pl_module: t.Any) -> None:
            weights["start"] = pl_module.net[0].weight.detach().clone()

        def on_validation_end(self, trainer: t.Any, pl_module: t.Any) -> None:
            weights["end"] = pl_module.net[0].weight.detach().clone()

        def on_train_epoch_end(self, trainer: t.Any, pl_module: t.Any) -> None:
            weights["train"] = pl_module.net[0].weight.detach().clone()

    module = testing.TinyModule()
    trainer = quiet_trainer(max_epochs=1, plugins=["ema"], callbacks=[Peek()])
    trainer.fit(module, testing.synthetic_loader(n=32), testing.synthetic_loader(n=8))
    averaged = trainer.fabric.get_plugin("ema").averaged_model.module.net[0].weight
    assert torch.equal(weights["start"], averaged) and torch.equal(weights["end"], averaged)
    assert torch.equal(weights["train"], module.net[0].weight)
    assert not torch.equal(averaged, module.net[0].weight)


def test_hook_order_with_the_recorder() -> None:
    recorder = testing.HookRecorder(only=["on_validation_start", "on_optimizer_step"])
    module = testing.TinyModule()
    trainer = quiet_trainer(max_epochs=1, plugins=["ema"], callbacks=[recorder])
    trainer.fit(module, testing.synthetic_loader(n=16), testing.synthetic_loader(n=8))
    assert recorder.names == ["on_optimizer_step"] * 2 + ["on_validation_start"]
    assert int(trainer.fabric.get_plugin("ema").averaged_model.n_averaged) == 2


def test_no_swap_before_the_first_update() -> None:
    seen: list[torch.Tensor] = []

    class Recording(testing.TinyModule):
        def validation_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            seen.append(self.net[0].weight.detach().clone())
            return super().validation_step(batch, batch_idx)

    module = Recording()
    ema = EMA(decay=0.5, update_starting_at_step=100)
    trainer = quiet_trainer(max_epochs=1, plugins=[ema])
    trainer.fit(module, testing.synthetic_loader(n=16), testing.synthetic_loader(n=8))
    assert int(ema.averaged_model.n_averaged) == 0
    assert torch.equal(seen[0], module.net[0].weight)  # nothing averaged yet: trained weights


def test_swap_for_validation_false_keeps_trained_weights() -> None:
    seen: list[torch.Tensor] = []

    class Recording(testing.TinyModule):
        def validation_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            seen.append(self.net[0].weight.detach().clone())
            return super().validation_step(batch, batch_idx)

    module = Recording()
    trainer = quiet_trainer(max_epochs=1, plugins=[EMA(decay=0.5, swap_for_validation=False)])
    trainer.fit(module, testing.synthetic_loader(n=16), testing.synthetic_loader(n=8))
    assert torch.equal(seen[0], module.net[0].weight)


def test_an_exception_during_validation_puts_the_trained_weights_back() -> None:
    class Failing(testing.TinyModule):
        def validation_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("validation broke")

    module = Failing()
    reference = testing.tiny_model()
    loader = testing.synthetic_loader(n=16)
    by_hand(reference, loader, epochs=1, decay=0.5)
    trainer = quiet_trainer(max_epochs=1, plugins=[EMA(decay=0.5)])
    with pytest.raises(RuntimeError, match="validation broke"):
        trainer.fit(module, loader, testing.synthetic_loader(n=8))
    assert equal(module.net.parameters(), reference.parameters())


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


@pytest.mark.parametrize("use_buffers", [True, False])
def test_buffers_are_averaged_and_swapped_only_with_use_buffers(use_buffers: bool) -> None:
    loader = testing.synthetic_loader(n=32)
    reference = WithBatchNorm()
    avg = AveragedModel(
        reference, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=use_buffers
    )
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ema = EMA(decay=0.7, use_buffers=use_buffers)
    fabric = loopkit.Fabric(accelerator="cpu", plugins=[ema])
    net = WithBatchNorm()
    model, fopt = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    for x, y in loader:
        opt.zero_grad()
        nn.functional.mse_loss(reference(x), y).backward()
        opt.step()
        avg.update_parameters(reference)
        fopt.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        fopt.step()
    assert equal(tensors(ema.averaged_model), tensors(avg))
    live_mean = net.net[1].running_mean.clone()
    with ema.use_averaged_weights():
        assert equal(net.parameters(), avg.module.parameters())
        expected_mean = avg.module.net[1].running_mean if use_buffers else live_mean
        assert torch.equal(net.net[1].running_mean, expected_mean)
    assert equal(net.parameters(), reference.parameters())
    assert torch.equal(net.net[1].running_mean, live_mean)


def test_several_modules_frozen_ones_are_not_averaged() -> None:
    ema = EMA(decay=0.5)
    fabric = loopkit.Fabric(accelerator="cpu", plugins=[ema])
    gen, disc, teacher = testing.tiny_model(1), testing.tiny_model(2), testing.tiny_model(3)
    teacher.requires_grad_(False)
    g, g_opt = fabric.setup(gen, torch.optim.SGD(gen.parameters(), lr=0.1))
    d, _ = fabric.setup(disc, torch.optim.SGD(disc.parameters(), lr=0.1))
    fabric.setup(teacher)
    x, y = next(iter(testing.synthetic_loader()))
    fabric.backward(nn.functional.mse_loss(g(x), y))
    g_opt.step()  # only the generator steps
    assert len(ema.averaged_models) == 2
    assert int(ema.averaged_model_of(g).n_averaged) == 1
    assert int(ema.averaged_model_of(d).n_averaged) == 0
    with pytest.raises(RuntimeError, match=r"averages 2 modules; use ema\.averaged_models"):
        _ = ema.averaged_model
    with pytest.raises(KeyError, match="does not average this Sequential"):
        ema.averaged_model_of(teacher)
    # Validation in a Fabric loop: fire the hooks yourself; only the updated module swaps.
    d_before = disc[0].weight.detach().clone()
    fabric.call("on_validation_start")
    assert torch.equal(gen[0].weight, ema.averaged_model_of(g).module[0].weight)
    assert torch.equal(disc[0].weight, d_before)
    fabric.call("on_validation_end")


# -- state ----------------------------------------------------------------------------------------


def train_fabric(ema: EMA, steps: int, net: nn.Module | None = None) -> nn.Module:
    fabric = loopkit.Fabric(accelerator="cpu", plugins=[ema])
    net = net if net is not None else testing.tiny_model()
    model, opt = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    for i, (x, y) in enumerate(testing.synthetic_loader(n=64)):
        if i == steps:
            break
        opt.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
    return net


def test_state_round_trip_before_and_after_setup(tmp_path: pathlib.Path) -> None:
    ema = EMA(decay=0.6, update_every_n_steps=2)
    train_fabric(ema, steps=5)
    path = tmp_path / "ema.pt"
    torch.save(ema.state_dict(), path)
    state = torch.load(path, weights_only=True)  # plain tensors, numbers and strings

    after = EMA(decay=0.6, update_every_n_steps=2)  # loaded once its module is set up
    train_fabric(after, steps=0)
    after.load_state_dict(state)
    before = EMA(decay=0.6, update_every_n_steps=2)  # loaded first, applied at set-up
    before.load_state_dict(state)
    train_fabric(before, steps=0)
    for restored in (after, before):
        assert equal(tensors(restored.averaged_model), tensors(ema.averaged_model))
        assert restored.state_dict()["averages"][0]["steps"] == 5


def test_fabric_save_and_load_continue_exactly(tmp_path: pathlib.Path) -> None:
    straight = EMA(decay=0.7)
    train_fabric(straight, steps=6)

    first = EMA(decay=0.7)
    net = train_fabric(first, steps=3)
    fabric = loopkit.Fabric(accelerator="cpu")
    fabric.save(tmp_path / "ckpt.pt", {"model": net, "ema": first})

    resumed = EMA(decay=0.7)
    fabric = loopkit.Fabric(accelerator="cpu", plugins=[resumed])
    net2 = testing.tiny_model(seed=9)
    model, opt = fabric.setup(net2, torch.optim.SGD(net2.parameters(), lr=0.1))
    fabric.load(tmp_path / "ckpt.pt", {"model": model, "ema": resumed})
    for i, (x, y) in enumerate(testing.synthetic_loader(n=64)):
        if i < 3:
            continue
        if i == 6:
            break
        opt.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
    assert equal(tensors(resumed.averaged_model), tensors(straight.averaged_model))


def needs_trainer_checkpoints() -> None:
    if not callable(getattr(loopkit.Trainer, "save_checkpoint", None)):
        pytest.skip("this loopkit's Trainer has no save_checkpoint()")


def test_trainer_checkpoint_holds_the_state_under_its_name_and_resumes(
    tmp_path: pathlib.Path,
) -> None:
    needs_trainer_checkpoints()
    train, val = testing.synthetic_loader(n=32), testing.synthetic_loader(n=8)
    straight = quiet_trainer(max_epochs=2, plugins=[EMA(decay=0.8)])
    straight_module = testing.TinyModule()
    straight.fit(straight_module, train, val)

    first = quiet_trainer(max_epochs=1, plugins=[EMA(decay=0.8)])
    first.fit(testing.TinyModule(), train, val)
    path = tmp_path / "one_epoch.ckpt"
    first.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["plugins"]["ema"]["averages"][0]
    assert saved["module"] == "TinyModule" and saved["steps"] == 4

    resumed = quiet_trainer(max_epochs=2, plugins=[EMA(decay=0.8)])
    resumed_module = testing.TinyModule(seed=5)
    resumed.fit(resumed_module, train, val, ckpt_path=path)
    assert equal(resumed_module.parameters(), straight_module.parameters())
    assert equal(
        tensors(resumed.fabric.get_plugin("ema").averaged_model),
        tensors(straight.fabric.get_plugin("ema").averaged_model),
    )


def test_a_checkpoint_taken_during_validation_holds_the_trained_weights(
    tmp_path: pathlib.Path,
) -> None:
    needs_trainer_checkpoints()
    path = tmp_path / "mid_validation.ckpt"

    class SaveDuringValidation(loopkit.Callback):
        def on_validation_epoch_end(self, trainer: t.Any, pl_module: t.Any) -> None:
            trainer.save_checkpoint(path)

    module = testing.TinyModule()
    trainer = quiet_trainer(max_epochs=1, plugins=["ema"], callbacks=[SaveDuringValidation()])
    trainer.fit(module, testing.synthetic_loader(n=32), testing.synthetic_loader(n=8))
    checkpoint = torch.load(path, weights_only=True)
    ema = trainer.fabric.get_plugin("ema")
    for name, value in module.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][name], value), name
    saved = checkpoint["plugins"]["ema"]["averages"][0]["averaged_model"]
    assert equal(saved.values(), ema.averaged_model.state_dict().values())


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": 1.5}, r"EMA\(decay=1.5\): pass a number between 0 and 1"),
        ({"decay": "high"}, r"EMA\(decay='high'\)"),
        ({"update_every_n_steps": 0}, r"EMA\(update_every_n_steps=0\): pass an int >= 1"),
        ({"update_starting_at_step": -1}, r"update_starting_at_step=-1\): pass an int >= 0"),
        ({"device": "gpu7"}, r"EMA\(device='gpu7'\): not a device"),
    ],
)
def test_bad_arguments_say_what_to_pass(kwargs: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EMA(**kwargs)


def test_no_averaged_model_before_setup() -> None:
    with pytest.raises(RuntimeError, match="EMA has no averaged model yet"):
        _ = EMA().averaged_model


def test_load_state_dict_errors() -> None:
    with pytest.raises(ValueError, match=r"expects what EMA.state_dict\(\) returns"):
        EMA().load_state_dict({"decay": 0.9})
    ema = EMA(decay=0.5)
    train_fabric(ema, steps=1)
    state = ema.state_dict()
    other = EMA(decay=0.5)
    train_fabric(other, steps=0, net=WithBatchNorm())
    with pytest.raises(ValueError, match="averages a Sequential, but the module set up at"):
        other.load_state_dict(state)
