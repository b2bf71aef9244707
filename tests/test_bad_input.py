"""The bad-input catalogue: every mistake gets a clear error naming what was passed and what to do.

Each case does one wrong thing through the public API and states the exception type and the
fragments its message must contain: the value or name the user wrote, and the advice. Cases are
grouped by where the mistake is made: choosing plugins and devices, using Fabric, hooks,
``configure_optimizers``, the Trainer's options, what ``training_step`` returns, logging, and
checkpoints.
"""

from __future__ import annotations

import math
import sys
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import loopkit
from loopkit import Fabric, LoopModule, ModelCheckpoint, Trainer
from loopkit.checkpoint import CheckpointError, safe_load
from loopkit.events import HookError
from loopkit.optim import OptimizerConfigError
from loopkit.plugins import (
    PluginConflictError,
    PluginLoadError,
    PluginNotFoundError,
    Registry,
    registry,
)

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

import plugin_fixtures
from _trainer_util import Regressor, data


@dataclass
class Case:
    name: str
    run: t.Callable[[Path], t.Any]
    error: type[BaseException]
    says: tuple[str, ...]  # fragments of the message: what was passed, and what to do
    needs: str = ""  # an import package the case needs (skipped without it)


def trainer(root: Path | None = None, **kwargs: t.Any) -> Trainer:
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    if root is not None:
        kwargs.setdefault("default_root_dir", root)
    return Trainer(**kwargs)


def fit(
    module: LoopModule, root: Path | None = None, loader: t.Any = None, **kwargs: t.Any
) -> None:
    ckpt_path = kwargs.pop("ckpt_path", None)
    val = kwargs.pop("val", None)
    trainer(root, **kwargs).fit(
        module, loader if loader is not None else data(), val, ckpt_path=ckpt_path
    )


def returning(value: t.Callable[[nn.Module], t.Any]) -> Regressor:
    """A Regressor whose configure_optimizers returns ``value(module)``."""

    class Configured(Regressor):
        def configure_optimizers(self) -> t.Any:
            return value(self)

    return Configured()


def stepping(step: t.Callable[[Regressor, t.Any, int], t.Any]) -> Regressor:
    class Stepping(Regressor):
        def training_step(self, batch: t.Any, batch_idx: int) -> t.Any:
            return step(self, batch, batch_idx)

    return Stepping()


def _sgd(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=0.1)


def _set_up(fabric_kwargs: dict[str, t.Any] | None = None) -> tuple[Fabric, t.Any, nn.Module]:
    fabric = Fabric(accelerator="cpu", **(fabric_kwargs or {}))
    module = nn.Linear(2, 1)
    return fabric, fabric.setup(module), module


# -- choosing plugins, devices and the like --------------------------------------------------------


def _fake_cuda(count: int) -> t.Callable[[Path], t.Any]:
    def run(_: Path) -> t.Any:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "is_available", lambda: True)
            mp.setattr(torch.cuda, "device_count", lambda: count)
            return Fabric(accelerator="cuda", devices=4)

    return run


class _LoggerWithout:
    def log(self, *args: t.Any) -> None: ...


CHOOSING = [
    Case(
        "unknown precision",
        lambda _: Fabric(precision="bf17-mixed"),
        PluginNotFoundError,
        ("'bf17-mixed'", "Installed precision plugins", "32-true"),
    ),
    Case(
        "precision of the wrong type",
        lambda _: Fabric(precision=3.5),
        TypeError,
        ("precision=3.5", "pass a name such as '32-true'"),
    ),
    Case(
        "unknown strategy",
        lambda _: Fabric(strategy="dpp"),
        PluginNotFoundError,
        ("'dpp'", "Installed strategy plugins", "single_device"),
    ),
    Case(
        "unknown accelerator",
        lambda _: Fabric(accelerator="tpuu"),
        PluginNotFoundError,
        ("'tpuu'", "Installed accelerator plugins", "cpu"),
    ),
    Case(
        "accelerator not on this machine",
        lambda _: Fabric(accelerator="cuda") if not torch.cuda.is_available() else None,
        RuntimeError,
        ("accelerator='cuda'", "use accelerator='cpu' or 'auto'"),
    ),
    Case(
        "unknown plugin",
        lambda _: Fabric(plugins=["no-such-plugin"]),
        PluginNotFoundError,
        ("'no-such-plugin'", "Installed"),
    ),
    Case(
        "more devices than the machine has",
        _fake_cuda(1),
        ValueError,
        ("devices=4", "cuda devices this machine does not have (it has 1)", "pass at most 1"),
    ),
    Case(
        "negative devices",
        lambda _: Fabric(accelerator="cpu", devices=-3),
        ValueError,
        ("devices=-3", "pass a positive int"),
    ),
    Case(
        "devices as words",
        lambda _: Fabric(accelerator="cpu", devices="many"),
        ValueError,
        ("devices='many'", "pass an int, a list of indices, 'auto'"),
    ),
    Case(
        "no nodes",
        lambda _: Fabric(num_nodes=0),
        ValueError,
        ("num_nodes=0", "pass a positive int"),
    ),
    Case(
        "two plugins for one slot",
        lambda _: Fabric(plugins=[loopkit.Precision(), loopkit.Precision()]),
        ValueError,
        ("two precision plugins", "one occupant"),
    ),
    Case(
        "a logger that cannot log",
        lambda _: Fabric(loggers=[_LoggerWithout()]),
        TypeError,
        ("_LoggerWithout", "log_metrics(metrics, step)", "logger plugin name"),
    ),
    Case(
        "unknown plugin kind",
        lambda _: registry().create("bogus", "x"),
        ValueError,
        ("'bogus'", "kinds are strategy, precision"),
    ),
]


@pytest.fixture(scope="module")
def fixture_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugin_fixtures.install(tmp_path_factory.getbasetemp() / "plugin-fixtures")


def test_a_plugin_that_fails_to_import_is_named_with_its_distribution(fixture_site: Path) -> None:
    with plugin_fixtures.on_sys_path(fixture_site):
        with pytest.raises(PluginLoadError) as err:
            Fabric(plugins=["fixture-broken"])
        message = str(err.value)
        assert "'fixture-broken'" in message
        assert "loopkit-fixture-broken" in message.lower().replace("_", "-")
        assert "failed to import" in message
        # Other plugins still load.
        assert Registry().load("32-true") is loopkit.Precision


def test_two_distributions_claiming_one_name_are_both_named(fixture_site: Path) -> None:
    with plugin_fixtures.on_sys_path(fixture_site):
        with pytest.raises(PluginConflictError) as err:
            Fabric(plugins=["fixture-dup"])
        message = str(err.value).lower().replace("_", "-")
        assert "'fixture-dup'" in message
        assert "loopkit-fixture-dup-a" in message and "loopkit-fixture-dup-b" in message
        assert "uninstall one of them" in message


# -- using Fabric ---------------------------------------------------------------------------------


def _setup_twice(_: Path) -> t.Any:
    fabric, _wrapped, module = _set_up()
    return fabric.setup(module)


def _setup_wrapped(_: Path) -> t.Any:
    fabric, wrapped, _module = _set_up()
    return fabric.setup(wrapped)


def _foreign_optimizer(_: Path) -> t.Any:
    fabric, _wrapped, _module = _set_up()
    return fabric.setup_optimizers(_sgd(nn.Linear(2, 1)))


def _optimizer_of_another_module(_: Path) -> t.Any:
    fabric = Fabric(accelerator="cpu")
    return fabric.setup(nn.Linear(2, 1), _sgd(nn.Linear(2, 1)))


def _backward_with_a_module_not_set_up(_: Path) -> t.Any:
    fabric, wrapped, _module = _set_up()
    other = nn.Linear(2, 1)
    fabric.backward(wrapped(torch.ones(1, 2)).sum(), model=other)


def _direct_backward(_: Path) -> t.Any:
    fabric = Fabric(accelerator="cpu", precision="16-mixed")
    module = nn.Linear(2, 1)
    model, opt = fabric.setup(module, _sgd(module))
    model(torch.ones(4, 2)).float().sum().backward()  # should have been fabric.backward(loss)
    opt.step()


def _missing_key(tmp: Path) -> t.Any:
    fabric, wrapped, _module = _set_up()
    fabric.save(tmp / "s.ckpt", {"model": wrapped})
    return fabric.load(tmp / "s.ckpt", {"model": wrapped, "epoch": 0})


FABRIC = [
    Case(
        "setup twice",
        _setup_twice,
        ValueError,
        ("Linear was already set up", "set up each module once"),
    ),
    Case(
        "setup of what setup returned",
        _setup_wrapped,
        ValueError,
        ("Linear was already set up by fabric.setup()", "keep using the object setup() returned"),
    ),
    Case(
        "setup of something else than a module",
        lambda _: Fabric(accelerator="cpu").setup("model"),
        TypeError,
        ("got str", "fabric.setup(model, optimizer)"),
    ),
    Case(
        "backward before setup",
        lambda _: Fabric(accelerator="cpu").backward(torch.ones(1, requires_grad=True).sum()),
        RuntimeError,
        ("backward() was called before any module was set up", "fabric.setup(model, optimizer)"),
    ),
    Case(
        "loss.backward() where the precision needs fabric.backward",
        _direct_backward,
        RuntimeError,
        ("fabric.backward() was never called", "16-mixed", "replace loss.backward() with"),
        needs="loopkit_precision",
    ),
    Case(
        "an optimizer over a module not set up",
        _foreign_optimizer,
        ValueError,
        ("SGD optimizes 2 parameter(s) of no module set up", "fabric.setup_module(model)"),
    ),
    Case(
        "an optimizer paired with another module",
        _optimizer_of_another_module,
        ValueError,
        ("not parameters of Linear", "together with the module that owns its parameters"),
    ),
    Case(
        "backward with a module not set up",
        _backward_with_a_module_not_set_up,
        ValueError,
        ("got a Linear that was not set up", "pass the module returned by fabric.setup()"),
    ),
    Case(
        "clip_gradients with neither bound",
        lambda _: _set_up()[0].clip_gradients(
            _set_up()[1], torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1)
        ),
        ValueError,
        ("clip_val=None, max_norm=None", "exactly one of clip_val="),
    ),
    Case(
        "unknown reduce op",
        lambda _: Fabric(accelerator="cpu").all_reduce(torch.ones(1), reduce_op="median"),
        ValueError,
        ("reduce_op='median'", "use 'sum', 'mean', 'max' or 'min'"),
    ),
    Case(
        "unknown phase",
        lambda _: Fabric(accelerator="cpu").wrap_phase("forwards", lambda phase: None),
        ValueError,
        ("'forwards'", "phases are forward, backward, optimizer_step"),
    ),
    Case(
        "save with a list of states",
        lambda tmp: Fabric(accelerator="cpu").save(tmp / "x.ckpt", [1, 2]),
        TypeError,
        ("got list", "fabric.save(path, {'model': model})"),
    ),
    Case(
        "load with a key the checkpoint lacks",
        _missing_key,
        KeyError,
        ("no entry for 'epoch'", "strict=False"),
    ),
    Case(
        "a seed out of range",
        lambda _: Fabric.seed_everything(-1),
        ValueError,
        ("seed=-1", "pass an int in [0, 2**32)"),
    ),
    Case(
        "setup_dataloaders with a number",
        lambda _: Fabric(accelerator="cpu").setup_dataloaders(5),
        TypeError,
        ("got int", "takes DataLoaders"),
    ),
]


# -- hooks -------------------------------------------------------------------------------------


class _WantsMore:
    def on_train_epoch_end(self, trainer: t.Any, losses: t.Any) -> None: ...


HOOKS = [
    Case(
        "a receiver with a parameter the hook does not give",
        lambda _: loopkit.Bus(fires=loopkit.HOOKS).connect(_WantsMore()),
        HookError,
        ("_WantsMore.on_train_epoch_end", "'losses'", "Give it a default"),
    ),
    Case(
        "a priority that is not a number",
        lambda _: loopkit.Bus().connect(lambda: None, "on_fit_start", priority="high"),
        TypeError,
        ("priority must be an int", "'high'"),
    ),
]


def test_a_misspelt_hook_warns_with_the_nearest_name() -> None:
    class Spelt:
        def on_train_epoch_ends(self, trainer: t.Any) -> None: ...

    with pytest.warns(UserWarning, match=r"Spelt\.on_train_epoch_ends .*'on_train_epoch_end'"):
        loopkit.Bus(fires=loopkit.HOOKS).connect(Spelt())


# -- configure_optimizers --------------------------------------------------------------------------


def _step_lr(opt: torch.optim.Optimizer) -> t.Any:
    return torch.optim.lr_scheduler.StepLR(opt, 1)


def _with_scheduler(config: dict[str, t.Any]) -> t.Callable[[nn.Module], t.Any]:
    def make(m: nn.Module) -> t.Any:
        opt = _sgd(m)
        scheduler = {k: (_step_lr(opt) if v == "STEP" else v) for k, v in config.items()}
        return {"optimizer": opt, "lr_scheduler": scheduler}

    return make


OPTIMIZERS = [
    Case(
        "configure_optimizers returns a string",
        lambda tmp: fit(returning(lambda m: "adam"), tmp),
        OptimizerConfigError,
        ("returned 'adam'", "configure_optimizers() may return:", "one optimizer: Adam(...)"),
    ),
    Case(
        "an optimizer dict without 'optimizer'",
        lambda tmp: fit(returning(lambda m: {"lr_scheduler": None}), tmp),
        OptimizerConfigError,
        ("has no 'optimizer' key", "may return"),
    ),
    Case(
        "a list holding something else than optimizers",
        lambda tmp: fit(returning(lambda m: [_sgd(m), 3]), tmp),
        OptimizerConfigError,
        ("3 is not an optimizer", "may return"),
    ),
    Case(
        "a scheduler config without scheduler",
        lambda tmp: fit(returning(_with_scheduler({"interval": "step"})), tmp),
        OptimizerConfigError,
        ("{'interval': 'step'}", "has no 'scheduler' key"),
    ),
    Case(
        "interval neither step nor epoch",
        lambda tmp: fit(returning(_with_scheduler({"scheduler": "STEP", "interval": "hour"})), tmp),
        OptimizerConfigError,
        ("interval='hour'", "use 'epoch' or 'step'"),
    ),
    Case(
        "frequency zero",
        lambda tmp: fit(returning(_with_scheduler({"scheduler": "STEP", "frequency": 0})), tmp),
        OptimizerConfigError,
        ("frequency=0", "use a positive int"),
    ),
    Case(
        "a misspelt scheduler key",
        lambda tmp: fit(
            returning(_with_scheduler({"scheduler": "STEP", "intervall": "step"})), tmp
        ),
        OptimizerConfigError,
        ("'intervall'", "accepted keys are 'scheduler', 'interval'"),
    ),
]


# -- the Trainer's options ------------------------------------------------------------------------

TRAINER = [
    Case(
        "no way to end training",
        lambda _: Trainer(),
        ValueError,
        ("neither max_epochs nor max_steps", "pass max_epochs=N or max_steps=N"),
    ),
    Case(
        "max_steps negative",
        lambda _: Trainer(max_steps=-5),
        ValueError,
        ("max_steps=-5", "pass a non-negative int (or -1 for no limit)"),
    ),
    Case(
        "max_epochs as text",
        lambda _: Trainer(max_epochs="3"),
        ValueError,
        ("max_epochs='3'", "pass a non-negative int"),
    ),
    Case(
        "accumulate_grad_batches zero",
        lambda _: Trainer(max_epochs=1, accumulate_grad_batches=0),
        ValueError,
        ("accumulate_grad_batches=0", "pass a positive int or a dict"),
    ),
    Case(
        "unknown clipping algorithm",
        lambda _: Trainer(max_epochs=1, gradient_clip_algorithm="l3"),
        ValueError,
        ("gradient_clip_algorithm='l3'", "use 'norm' or 'value'"),
    ),
    Case(
        "a fraction of batches above one",
        lambda _: Trainer(max_epochs=1, limit_train_batches=1.5),
        ValueError,
        ("limit_train_batches=1.5", "in [0, 1]"),
    ),
    Case(
        "log_every_n_steps zero",
        lambda _: Trainer(max_epochs=1, log_every_n_steps=0),
        ValueError,
        ("log_every_n_steps=0", "pass a positive int"),
    ),
    Case(
        "check_val_every_n_epoch zero",
        lambda _: Trainer(max_epochs=1, check_val_every_n_epoch=0),
        ValueError,
        ("check_val_every_n_epoch=0", "pass a positive int or None"),
    ),
    Case(
        "val_check_interval beyond the epoch",
        lambda tmp: fit(_Validating(), tmp, val=data(), val_check_interval=50),
        ValueError,
        ("val_check_interval=50", "more than the 6 training batches", "lower it"),
    ),
    Case(
        "fit on a plain nn.Module",
        lambda _: trainer().fit(nn.Linear(4, 1), data()),  # type: ignore[arg-type]
        TypeError,
        ("got Linear", "subclass loopkit.LoopModule"),
    ),
    Case(
        "fit without training data",
        lambda _: trainer().fit(Regressor()),
        ValueError,
        ("fit() needs training data", "pass train_dataloaders="),
    ),
    Case(
        "a dataloader of length zero",
        lambda tmp: fit(
            Regressor(), tmp, DataLoader(TensorDataset(torch.ones(0, 4)), batch_size=2)
        ),
        ValueError,
        ("DataLoader) has no batches (length 0)", "dataset is not empty", "drop_last=True"),
    ),
    Case(
        "accumulation with manual optimization",
        lambda tmp: fit(_Manual(), tmp, accumulate_grad_batches=2),
        ValueError,
        ("accumulate_grad_batches=2", "automatic_optimization is False", "Accumulate by hand"),
    ),
    Case(
        "two optimizers but no optimizer_idx",
        lambda tmp: fit(returning(lambda m: [_sgd(m), _sgd(m)]), tmp),
        TypeError,
        ("returned 2 optimizers", "takes no optimizer_idx", "Add that parameter"),
    ),
    Case(
        "manual_backward in automatic optimization",
        lambda tmp: fit(
            stepping(lambda self, b, i: self.manual_backward(self.compute_loss(b))), tmp
        ),
        RuntimeError,
        ("automatic_optimization is True", "return the loss from training_step"),
    ),
    Case(
        "the trainer of a module that has none",
        lambda _: Regressor().trainer,
        RuntimeError,
        ("Regressor is not attached to a Trainer", "while trainer.fit()"),
    ),
]


class _Validating(Regressor):
    def validation_step(self, batch: t.Any, batch_idx: int) -> None:
        self.log("val_loss", self.compute_loss(batch))


class _Manual(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: t.Any, batch_idx: int) -> None:
        return None


# -- what training_step returns, and what it logs --------------------------------------------------


def _nan_at_batch_2(self: Regressor, batch: t.Any, batch_idx: int) -> torch.Tensor:
    loss = self.compute_loss(batch)
    return loss * math.nan if batch_idx == 2 else loss


STEPS = [
    Case(
        "a non-finite loss",
        lambda tmp: fit(stepping(_nan_at_batch_2), tmp),
        FloatingPointError,
        ("returned a non-finite loss ([nan])", "batch 2 (global step 2)", "return None"),
    ),
    Case(
        "a loss that does not require grad",
        lambda tmp: fit(stepping(lambda self, b, i: self.compute_loss(b).detach()), tmp),
        RuntimeError,
        ("loss that does not require grad", "Return the loss computed from the module's"),
    ),
    Case(
        "training_step returns text",
        lambda tmp: fit(stepping(lambda self, b, i: "done"), tmp),
        TypeError,
        ("training_step returned a str", "return the loss tensor, a dict with a 'loss' key"),
    ),
    Case(
        "training_step returns a dict without loss",
        lambda tmp: fit(stepping(lambda self, b, i: {"out": self.compute_loss(b)}), tmp),
        TypeError,
        ("without a 'loss' key (keys: 'out')", "a dict with a 'loss' key"),
    ),
    Case(
        "logging a vector",
        lambda tmp: fit(
            stepping(lambda self, b, i: self.log("v", torch.ones(3)) or self.compute_loss(b)), tmp
        ),
        ValueError,
        ("self.log('v', ...) got a tensor of shape (3,)", "log a scalar"),
    ),
    Case(
        "logging text",
        lambda tmp: fit(
            stepping(lambda self, b, i: self.log("v", "high") or self.compute_loss(b)), tmp
        ),
        TypeError,
        ("self.log('v', ...) got a str", "log a number or a one-element tensor"),
    ),
    Case(
        "an unknown reduction",
        lambda tmp: fit(
            stepping(
                lambda self, b, i: (
                    self.log("v", 1.0, on_epoch=True, reduce_fx="median") or self.compute_loss(b)
                )
            ),
            tmp,
        ),
        ValueError,
        ("reduce_fx='median'", "use 'mean', 'sum', 'max', 'min'"),
    ),
]


# -- checkpoints -------------------------------------------------------------------------------


def _a_file(tmp: Path) -> Path:
    (tmp / "f").write_text("not a folder")
    return tmp / "f"


def _saved(tmp: Path) -> Path:
    tr = trainer(tmp)
    tr.fit(Regressor(), data())
    tr.save_checkpoint(tmp / "saved.ckpt")
    return tmp / "saved.ckpt"


def _two_optimizers_checkpoint(tmp: Path) -> Path:
    ckpt = safe_load(_saved(tmp))
    ckpt["optimizer_states"] = ckpt["optimizer_states"] * 2
    torch.save(ckpt, tmp / "two.ckpt")
    return tmp / "two.ckpt"


def _truncated(tmp: Path) -> Path:
    path = _saved(tmp)
    path.write_bytes(path.read_bytes()[:300])
    return path


CHECKPOINTS = [
    Case(
        "resume from a file that does not exist",
        lambda tmp: fit(Regressor(), tmp, ckpt_path=tmp / "nope.ckpt"),
        FileNotFoundError,
        ("nope.ckpt", "no such file", "'last'"),
    ),
    Case(
        "resume from a word that is not 'last'",
        lambda tmp: fit(Regressor(), tmp, ckpt_path="latest"),
        FileNotFoundError,
        ("ckpt_path='latest'", "or 'last' for the newest last.ckpt"),
    ),
    Case(
        "'last' without a ModelCheckpoint",
        lambda tmp: fit(Regressor(), tmp, ckpt_path="last"),
        ValueError,
        ("ckpt_path='last'", "enable_checkpointing=False", "pass the checkpoint's path"),
    ),
    Case(
        "a checkpoint path of the wrong type",
        lambda tmp: fit(Regressor(), tmp, ckpt_path=3),
        TypeError,
        ("ckpt_path=3", "pass a file path, 'last' or 'best'"),
    ),
    Case(
        "'best' before anything was saved",
        lambda tmp: trainer(tmp, enable_checkpointing=True).validate(_Validating(), data(), "best"),
        ValueError,
        ("ckpt_path='best'", "no best checkpoint is known yet", "pass the checkpoint's path"),
    ),
    Case(
        "save_checkpoint before fit",
        lambda tmp: trainer(tmp).save_checkpoint(tmp / "x.ckpt"),
        RuntimeError,
        ("save_checkpoint() needs a module", "trainer.fit(module)"),
    ),
    Case(
        "save_checkpoint to a number",
        lambda tmp: trainer(tmp).save_checkpoint(7),  # type: ignore[arg-type]
        TypeError,
        ("filepath=7", "pass a file path"),
    ),
    Case(
        "save_checkpoint with storage options",
        lambda tmp: trainer(tmp).save_checkpoint(tmp / "x.ckpt", storage_options={"a": 1}),
        TypeError,
        ("storage_options", "pass a checkpoint_io plugin"),
    ),
    Case(
        "a truncated checkpoint",
        lambda tmp: fit(Regressor(), tmp, ckpt_path=_truncated(tmp)),
        CheckpointError,
        ("saved.ckpt' is truncated or corrupt", "Load an earlier checkpoint"),
    ),
    Case(
        "a checkpoint of another optimizer configuration",
        lambda tmp: fit(Regressor(), tmp, ckpt_path=_two_optimizers_checkpoint(tmp)),
        CheckpointError,
        ("two.ckpt' holds the state of 2 optimizer(s)", "returned 1", "configuration the"),
    ),
    Case(
        "ModelCheckpoint mode",
        lambda _: ModelCheckpoint(monitor="val_loss", mode="minimum"),
        ValueError,
        ("mode='minimum'", "use 'min'", "or 'max'"),
    ),
    Case(
        "ModelCheckpoint top-k without a monitor",
        lambda _: ModelCheckpoint(save_top_k=3),
        ValueError,
        ("save_top_k=3, monitor=None", "pass monitor="),
    ),
    Case(
        "ModelCheckpoint negative top-k",
        lambda _: ModelCheckpoint(save_top_k=-2),
        ValueError,
        ("save_top_k=-2", "pass -1 (keep every checkpoint), 0 (none) or a positive int"),
    ),
    Case(
        "ModelCheckpoint with both triggers",
        lambda _: ModelCheckpoint(every_n_train_steps=2, every_n_epochs=1),
        ValueError,
        ("every_n_train_steps=2, every_n_epochs=1", "pass one of them"),
    ),
    Case(
        "ModelCheckpoint negative epochs",
        lambda _: ModelCheckpoint(every_n_epochs=-1),
        ValueError,
        ("every_n_epochs=-1", "pass a non-negative int"),
    ),
    Case(
        "ModelCheckpoint into a file",
        lambda tmp: ModelCheckpoint(dirpath=_a_file(tmp)),
        ValueError,
        ("dirpath=", "is a file; pass a folder"),
    ),
    Case(
        "ModelCheckpoint linking last",
        lambda _: ModelCheckpoint(save_last="link"),
        ValueError,
        ("save_last='link'", "pass True"),
    ),
    Case(
        "ModelCheckpoint monitor of the wrong type",
        lambda _: ModelCheckpoint(monitor=5),  # type: ignore[arg-type]
        TypeError,
        ("monitor=5", "monitor='val_loss'"),
    ),
    Case(
        "ModelCheckpoint monitoring a metric never logged",
        lambda tmp: fit(Regressor(), tmp, callbacks=[ModelCheckpoint(monitor="val_acc")]),
        ValueError,
        ("monitor='val_acc'", "Log it with self.log('val_acc', value)"),
    ),
    Case(
        "ModelCheckpoint filename with a bad format",
        lambda tmp: fit(Regressor(), tmp, callbacks=[ModelCheckpoint(filename="{epoch:q}")]),
        ValueError,
        ("filename='{epoch:q}'", "fix the format spec"),
    ),
    Case(
        "two ModelCheckpoints writing the same files",
        lambda tmp: fit(
            Regressor(),
            tmp,
            callbacks=[ModelCheckpoint(save_last=True), ModelCheckpoint(every_n_train_steps=2)],
        ),
        ValueError,
        ("write files named '{epoch}-{step}'", "Give one of them another filename="),
    ),
]

CASES = [*CHOOSING, *FABRIC, *HOOKS, *OPTIMIZERS, *TRAINER, *STEPS, *CHECKPOINTS]


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) + 3 >= 40  # the three plugin-loading and spelling tests above count too
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    if case.needs:
        pytest.importorskip(case.needs)
    if case.name == "accelerator not on this machine" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(case.error) as err:
        case.run(tmp_path)
    message = str(err.value)
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} is not in:\n{message}"
    assert len(message) > 25  # a sentence, not a bare value or a key
