"""Real XLA runs on PJRT's CPU client: Fabric and Trainer on ``xla`` against eager CPU, the graph
cut per step, compilation counts, checkpoints, bf16, and ``xla_spmd`` over two CPU devices.

Needs torch_xla (plugins/xla/scripts/test.sh builds an env that has it); skipped without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

torch_xla = pytest.importorskip("torch_xla")
if os.environ.get("PJRT_DEVICE", "CPU") != "CPU":
    pytest.skip("these tests compare with eager CPU results: run them with PJRT_DEVICE=CPU",
                allow_module_level=True)  # fmt: skip

import torch
import torch_xla.debug.metrics as met
from helpers import X, Y, assert_close, eager_reference, loader, make_model, make_optimizer, on_cpu
from torch.nn import functional as F

from loopkit import Fabric, LoopModule, Precision, Trainer

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every torch_xla.sync() call (the strategy's and MpDeviceLoader's), as it happens."""
    calls: list[str] = []
    real = torch_xla.sync

    def counting(*args: t.Any, **kwargs: t.Any) -> t.Any:
        calls.append("sync")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_xla, "sync", counting)
    return calls


def compiled_graphs() -> int:
    """Programs torch_xla compiled so far in this process (cache misses)."""
    return int(met.counter_value("UncachedCompile") or 0)


def fabric_loop(fabric: Fabric, epochs: int = 2, batch_size: int = 8) -> t.Any:
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    train = fabric.setup_dataloaders(loader(batch_size))
    for _ in range(epochs):
        for xb, yb in train:
            assert xb.device.type == "xla"
            loss = F.mse_loss(model(xb), yb)
            fabric.backward(loss)
            opt.step()
            opt.zero_grad()
    return model


def test_fabric_loop_on_one_xla_device_matches_eager_cpu() -> None:
    fabric = Fabric(accelerator="xla")
    assert type(fabric.strategy).__name__ == "XLAStrategy"  # strategy="auto" on xla
    model = fabric_loop(fabric)
    assert fabric.device.type == "xla" and fabric.world_size == 1 and fabric.global_rank == 0
    assert all(p.device.type == "xla" for p in model.parameters())
    assert_close(model.state_dict(), eager_reference())


def test_tpu_is_the_same_accelerator() -> None:
    fabric = Fabric(accelerator="tpu", strategy="xla", devices=1)
    assert fabric.accelerator.device_type == "xla" and fabric.device.type == "xla"


@pytest.mark.parametrize("batches_from", ["setup_dataloaders", "to_device"])
def test_one_graph_cut_per_step_and_no_recompilation(
    sync_calls: list[str], batches_from: str
) -> None:
    fabric = Fabric(accelerator="xla")
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    if batches_from == "setup_dataloaders":
        batches = iter(fabric.setup_dataloaders(loader(8)))  # MpDeviceLoader
    else:
        batches = (fabric.to_device(batch) for batch in loader(8))
    per_step, graphs = [], []
    for _ in range(6):
        before = len(sync_calls)
        xb, yb = next(batches)  # after a step's own cut, the device loader makes no second one
        fabric.backward(F.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
        per_step.append(len(sync_calls) - before)
        graphs.append(compiled_graphs())
    # the device loader's first next() cuts too, with nothing pending yet
    assert per_step[1:] == [1] * 5, per_step
    assert graphs[1] == graphs[-1], graphs  # every step after the second replays a program


def test_accumulating_batches_are_cut_by_the_device_loader(sync_calls: list[str]) -> None:
    fabric = Fabric(accelerator="xla")
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    per_batch, graphs = [], []
    train = fabric.setup_dataloaders(loader(8))
    before = len(sync_calls)
    for i, (xb, yb) in enumerate(train):
        per_batch.append(len(sync_calls) - before)
        before = len(sync_calls)
        fabric.backward(F.mse_loss(model(xb), yb) / 2)
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()
        graphs.append(compiled_graphs())
    # batch i's count holds the cut made between batch i-1 and it: by the loader after an
    # accumulating batch, by the optimizer step after a stepping one; never two
    assert per_batch[1:] == [1] * 5, per_batch
    assert graphs[3] == graphs[-1], graphs


class Regressor(LoopModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self)


def test_trainer_on_xla_matches_the_trainer_on_cpu(tmp_path: Path) -> None:
    def fit(accelerator: str) -> dict[str, torch.Tensor]:
        module = Regressor()
        trainer = Trainer(
            accelerator=accelerator, max_epochs=2, logger=False, enable_progress_bar=False,
            enable_checkpointing=False, enable_model_summary=False,
            default_root_dir=tmp_path / accelerator,
        )  # fmt: skip
        trainer.fit(module, loader(8))
        assert trainer.global_step == 12
        return on_cpu(module.state_dict())

    on_xla = fit("xla")
    assert_close(on_xla, fit("cpu"))


def test_the_trainer_resumes_exactly_from_its_checkpoint_on_xla(tmp_path: Path) -> None:
    def fit(epochs: int, root: str, ckpt_path: Path | None = None) -> tuple[Trainer, dict]:
        module = Regressor()
        trainer = Trainer(
            accelerator="xla", max_epochs=epochs, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path / root,
        )  # fmt: skip
        trainer.fit(module, loader(8), ckpt_path=ckpt_path)
        return trainer, on_cpu(module.state_dict())

    _, uninterrupted = fit(3, "whole")
    fit(1, "stopped")
    saved = sorted((tmp_path / "stopped").rglob("*.ckpt"))
    assert len(saved) == 1, saved
    checkpoint = torch.load(saved[0], weights_only=False)
    assert all(v.device.type == "cpu" for v in checkpoint["state_dict"].values())
    resumed, state = fit(3, "stopped", ckpt_path=saved[0])
    assert resumed.global_step == 18
    for key, value in uninterrupted.items():
        assert torch.equal(state[key], value), key


def test_checkpoints_are_written_from_cpu_tensors_and_restore(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="xla")
    model = fabric_loop(fabric, epochs=1)
    opt_state = {"lr": 0.5}
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "extra": opt_state, "step": 6})
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in raw["model"].values())
    assert raw["step"] == 6 and raw["extra"] == {"lr": 0.5}

    other = Fabric(accelerator="xla")
    fresh = other.setup(make_model())
    rest = other.load(tmp_path / "ckpt.pt", {"model": fresh})
    assert rest == {"extra": {"lr": 0.5}, "step": 6}
    assert all(p.device.type == "xla" for p in fresh.parameters())
    for key, value in on_cpu(model.state_dict()).items():
        assert torch.equal(on_cpu(fresh.state_dict())[key], value), key


def test_resuming_the_optimizer_continues_like_an_uninterrupted_run(tmp_path: Path) -> None:
    def steps(fabric: Fabric, model: t.Any, opt: t.Any, batches: list[int]) -> None:
        for i in batches:
            xb, yb = fabric.to_device((X[i * 8 : i * 8 + 8], Y[i * 8 : i * 8 + 8]))
            fabric.backward(F.mse_loss(model(xb), yb))
            opt.step()
            opt.zero_grad()

    fabric = Fabric(accelerator="xla")
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    steps(fabric, model, opt, [0, 1, 2])
    fabric.save(tmp_path / "mid.pt", {"model": model, "optimizer": opt})
    steps(fabric, model, opt, [3, 4, 5])

    resumed = Fabric(accelerator="xla")
    model2 = make_model()
    model2, opt2 = resumed.setup(model2, make_optimizer(model2))
    resumed.load(tmp_path / "mid.pt", {"model": model2, "optimizer": opt2})
    steps(resumed, model2, opt2, [3, 4, 5])
    assert_close(model2.state_dict(), model.state_dict())


class AutocastBF16(Precision):
    """A precision written against the kernel's contract only: autocast on the host's device."""

    active = True

    def attach(self, host: t.Any) -> None:
        self.device_type = host.device.type

    def forward_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def train_losses(fabric: Fabric, epochs: int = 6) -> tuple[t.Any, list[float], torch.dtype]:
    model = make_model()
    model, opt = fabric.setup(model, make_optimizer(model))
    losses: list[torch.Tensor] = []
    out_dtype = torch.float32
    for _ in range(epochs):
        for xb, yb in fabric.setup_dataloaders(loader(8)):
            out = model(xb)
            out_dtype = out.dtype
            loss = F.mse_loss(out.float(), yb)
            fabric.backward(loss)
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
    return model, [v.item() for v in losses], out_dtype


def test_a_precision_learns_the_xla_device_type_through_the_fabric() -> None:
    precision = AutocastBF16()
    model, losses, out_dtype = train_losses(Fabric(accelerator="xla", precision=precision))
    assert precision.device_type == "xla"
    assert out_dtype == torch.bfloat16  # autocast ran on the xla device
    assert next(model.parameters()).dtype == torch.float32
    assert sum(losses[-6:]) < 0.5 * sum(losses[:6]), losses


@pytest.mark.parametrize(("name", "param_dtype"), [("bf16-mixed", torch.float32),
                                                  ("bf16-true", torch.bfloat16)])  # fmt: skip
def test_bf16_precisions_train_on_xla(name: str, param_dtype: torch.dtype) -> None:
    loopkit_precision = pytest.importorskip("loopkit_precision")
    cls = {"bf16-mixed": "BF16MixedPrecision", "bf16-true": "BF16TruePrecision"}[name]
    precision = getattr(loopkit_precision, cls)()
    fabric = Fabric(accelerator="xla", precision=precision)
    model, losses, out_dtype = train_losses(fabric)
    if name == "bf16-mixed":
        assert precision.device_type == "xla"
    assert next(model.parameters()).dtype == param_dtype
    assert out_dtype == torch.float32  # outputs are handed back in float32
    assert sum(losses[-6:]) < 0.5 * sum(losses[:6]), losses


def test_xla_spmd_over_two_cpu_devices_matches_one_device(tmp_path: Path) -> None:
    out = tmp_path / "spmd.pt"
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "spmd_run.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = torch.load(out, weights_only=True)
    assert result["world_size"] == 1 and result["devices"] == 2
    assert result["sharding"].startswith("{devices=[2"), result["sharding"]  # batch split in 2
    assert result["syncs_per_step"] == [1] * 12, result["syncs_per_step"]  # no loader cuts
    assert "strategy='xla' with devices=2 on the CPU" in result["replicas_error"]

    single = fabric_loop(Fabric(accelerator="xla"))
    assert_close(result["state"], single.state_dict())
    assert_close(result["state"], eager_reference())


def test_the_multi_replica_check_script_passes_on_one_device(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # On a TPU host the same script starts one replica per device (docs/xla.md); here PJRT has
    # one CPU device, so it runs in this process.
    spec = importlib.util.spec_from_file_location("_replicas_run", SCRIPTS / "replicas_run.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main() == 0, capsys.readouterr().out
    assert capsys.readouterr().out.count("ok  ") == 4
