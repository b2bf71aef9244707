"""Trainer checkpoints: what a file holds, which files ModelCheckpoint keeps, and safe loading."""

from __future__ import annotations

import os
import pickle
import sys
import typing as t
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import loopkit
from loopkit import Callback, ModelCheckpoint
from loopkit.checkpoint import CheckpointError, UnsafeCheckpointError, safe_load, verify
from loopkit.plugins import Plugin

sys.path.insert(0, str(Path(__file__).parent))

import _resume_job as job
from _trainer_util import Regressor, data

# -- helpers ---------------------------------------------------------------------------------------


def trainer(root: Path, **kwargs: t.Any) -> loopkit.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("max_epochs", 2)
    return loopkit.Trainer(default_root_dir=root, **kwargs)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Logged(Regressor):
    """Logs a decreasing 'metric' per epoch (0.9, 0.8, ...) and an increasing 'score'."""

    def training_step(self, batch: t.Any, batch_idx: int) -> torch.Tensor:
        self.log("metric", 0.9 - 0.1 * self.current_epoch, on_step=False, on_epoch=True)
        self.log("score", [0.5, 0.9, 0.1, 0.7, 0.3][self.current_epoch], on_epoch=True)
        return super().training_step(batch, batch_idx)


class Counting(Plugin):
    """A subscriber plugin with state."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, t.Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: t.Any) -> None:
        self.batches = state["batches"]


class Noted(Callback):
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.loaded: t.Any = None

    def state_dict(self) -> dict[str, t.Any]:
        return {"tag": self.tag}

    def load_state_dict(self, state_dict: t.Any) -> None:
        self.loaded = dict(state_dict)

    def on_save_checkpoint(self, trainer: t.Any, pl_module: t.Any, checkpoint: t.Any) -> None:
        checkpoint.setdefault("notes", []).append(self.tag)

    def on_load_checkpoint(self, checkpoint: t.Any) -> None:
        self.seen_notes = list(checkpoint.get("notes", []))


class Hooked(Regressor):
    def __init__(self, width: int = 3, act: t.Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()  # act (a module, not plain data) is left out of checkpoints
        self.loaded_extra: t.Any = None

    def on_save_checkpoint(self, checkpoint: dict[str, t.Any]) -> None:
        checkpoint["extra"] = torch.arange(3)

    def on_load_checkpoint(self, checkpoint: dict[str, t.Any]) -> None:
        self.loaded_extra = checkpoint["extra"]


# -- what a checkpoint holds --------------------------------------------------------------------


def test_a_checkpoint_holds_everything_that_changes(tmp_path: Path) -> None:
    plugin = Counting()
    plugin.plugin_name = "counting"
    tr = trainer(
        tmp_path, plugins=[plugin], callbacks=[Noted("a"), Noted("b")], enable_checkpointing=False
    )
    module = Hooked(act=nn.ReLU())
    tr.fit(module, data())
    tr.save_checkpoint(tmp_path / "x.ckpt")
    # Plain data only: torch's own weights_only loader reads it, nothing allow-listed.
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    assert ckpt["loopkit_version"] == loopkit.__version__
    assert (ckpt["epoch"], ckpt["global_step"]) == (2, 12)
    assert torch.equal(ckpt["state_dict"]["layer.weight"], module.layer.weight)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    assert ckpt["lr_schedulers"] == []
    assert ckpt["loops"]["stage"] == "ended"
    assert ckpt["loops"]["total_batches"] == 12
    assert set(ckpt["rng"]) >= {"python", "torch"}
    assert ckpt["rng"]["torch"].dtype == torch.uint8
    assert ckpt["precision"] == {}
    assert ckpt["plugins"]["counting"] == {"batches": 12}
    assert ckpt["callbacks"] == {"Noted": {"tag": "a"}, "Noted#1": {"tag": "b"}}
    assert ckpt["hyper_parameters"] == {"width": 3}
    assert ckpt["notes"] == ["a", "b"]  # on_save_checkpoint of callbacks...
    assert torch.equal(ckpt["extra"], torch.arange(3))  # ...and of the module
    assert "gradients" not in ckpt  # no accumulation window was open


def test_state_is_restored_into_plugins_callbacks_and_hooks(tmp_path: Path) -> None:
    first = trainer(tmp_path, callbacks=[Noted("a"), Noted("b")], enable_checkpointing=False)
    p1 = Counting()
    p1.plugin_name = "counting"
    first.fabric.add_plugin(p1)
    first.fit(Hooked(), data())
    first.save_checkpoint(tmp_path / "x.ckpt")
    callbacks = [Noted("c"), Noted("d")]
    p2 = Counting()
    p2.plugin_name = "counting"
    second = trainer(tmp_path, callbacks=callbacks, max_epochs=3, enable_checkpointing=False)
    second.fabric.add_plugin(p2)
    module = Hooked()
    second.fit(module, data(), ckpt_path=tmp_path / "x.ckpt")
    assert [cb.loaded for cb in callbacks] == [{"tag": "a"}, {"tag": "b"}]
    assert callbacks[0].seen_notes == ["a", "b"]
    assert torch.equal(module.loaded_extra, torch.arange(3))
    assert p2.batches == 18  # 12 restored + 6 of the third epoch
    assert second.global_step == 18


def test_weights_only_checkpoint_cannot_resume(tmp_path: Path) -> None:
    tr = trainer(tmp_path, enable_checkpointing=False)
    tr.fit(Regressor(), data())
    tr.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    ckpt = torch.load(tmp_path / "w.ckpt", weights_only=True)
    assert set(ckpt) == {"loopkit_version", "format", "epoch", "global_step", "state_dict"}
    with pytest.raises(CheckpointError, match=r"w\.ckpt' holds only the module's weights"):
        trainer(tmp_path, max_epochs=3).fit(Regressor(), data(), ckpt_path=tmp_path / "w.ckpt")


def test_fit_twice_from_checkpoint_counts_on(tmp_path: Path) -> None:
    tr = trainer(tmp_path, max_epochs=1)
    tr.fit(Regressor(), data())
    last = tmp_path / "checkpoints" / "epoch=0-step=6.ckpt"
    again = trainer(tmp_path, max_epochs=2)
    again.fit(Regressor(), data(), ckpt_path=last)
    assert (again.current_epoch, again.global_step) == (2, 12)


# -- ModelCheckpoint ------------------------------------------------------------------------------


def test_enabled_by_default_under_default_root_dir(tmp_path: Path) -> None:
    tr = trainer(tmp_path)
    assert isinstance(tr.checkpoint_callback, ModelCheckpoint)
    tr.fit(Regressor(), data())
    # Every epoch by default; the newest only (save_top_k=1, no monitor).
    assert names(tmp_path / "checkpoints") == ["epoch=1-step=12.ckpt"]
    assert tr.checkpoint_callback.best_model_path == str(
        (tmp_path / "checkpoints" / "epoch=1-step=12.ckpt").resolve()
    )
    assert trainer(tmp_path, enable_checkpointing=False).checkpoint_callback is None


def test_every_n_train_steps_keep_all_and_last(tmp_path: Path) -> None:
    cb = ModelCheckpoint(every_n_train_steps=4, save_top_k=-1, save_last=True)
    trainer(tmp_path, callbacks=[cb]).fit(Regressor(), data())
    assert names(tmp_path / "checkpoints") == [
        "epoch=0-step=4.ckpt", "epoch=1-step=12.ckpt", "epoch=1-step=8.ckpt", "last.ckpt",
    ]  # fmt: skip
    last = safe_load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 12
    assert cb.last_model_path.endswith("last.ckpt")


def test_every_n_epochs_and_filename_template(tmp_path: Path) -> None:
    cb = ModelCheckpoint(
        dirpath=tmp_path / "ck", filename="m-{epoch:02d}-{metric:.3f}", every_n_epochs=2,
        save_top_k=-1,
    )  # fmt: skip
    trainer(tmp_path, callbacks=[cb], max_epochs=4).fit(Logged(), data())
    assert names(tmp_path / "ck") == [
        "m-epoch=01-metric=0.800.ckpt", "m-epoch=03-metric=0.600.ckpt",
    ]  # fmt: skip
    plain = ModelCheckpoint(filename="{epoch}", auto_insert_metric_name=False)
    assert os.path.basename(plain.format_checkpoint_name({"epoch": 3})) == "3.ckpt"


@pytest.mark.parametrize(
    ("mode", "kept", "best"),
    [("max", ["1", "3"], "1"), ("min", ["2", "4"], "2")],
)
def test_top_k_by_a_monitored_metric(tmp_path: Path, mode: str, kept: list[str], best: str) -> None:
    # score by epoch: 0.5, 0.9, 0.1, 0.7, 0.3
    cb = ModelCheckpoint(
        monitor="score", mode=mode, save_top_k=2, filename="{epoch}", auto_insert_metric_name=False
    )
    trainer(tmp_path, callbacks=[cb], max_epochs=5).fit(Logged(), data())
    assert names(tmp_path / "checkpoints") == [f"{k}.ckpt" for k in kept]
    assert Path(cb.best_model_path).name == f"{best}.ckpt"
    assert float(cb.best_model_score) == pytest.approx({"max": 0.9, "min": 0.1}[mode])
    assert sorted(Path(p).name for p in cb.best_k_models) == [f"{k}.ckpt" for k in kept]


def test_validate_from_best_and_last(tmp_path: Path) -> None:
    class Val(Logged):
        def validation_step(self, batch: t.Any, batch_idx: int) -> None:
            self.log("val_loss", self.compute_loss(batch))

    cb = ModelCheckpoint(monitor="val_loss", save_last=True)
    tr = trainer(tmp_path, callbacks=[cb], max_epochs=3)
    module = Val()
    tr.fit(module, data(), data(n=16))
    best = safe_load(cb.best_model_path)["state_dict"]
    with torch.no_grad():
        module.layer.weight.zero_()
    tr.validate(module, data(n=16), ckpt_path="best")
    assert torch.equal(module.layer.weight, best["layer.weight"])
    tr.validate(module, data(n=16), ckpt_path="last")
    assert torch.equal(
        module.layer.weight, safe_load(cb.last_model_path)["state_dict"]["layer.weight"]
    )


def test_two_callbacks_keep_separate_states(tmp_path: Path) -> None:
    a = ModelCheckpoint(monitor="score", mode="max", filename="best-{epoch}")
    b = ModelCheckpoint(every_n_train_steps=3, save_last=True)
    assert a.state_key != b.state_key
    tr = trainer(tmp_path, callbacks=[a, b])
    tr.fit(Logged(), data())
    ckpt = safe_load(tmp_path / "checkpoints" / "last.ckpt")
    assert set(ckpt["callbacks"]) == {a.state_key, b.state_key}
    assert ckpt["callbacks"][b.state_key]["last_global_step_saved"] == 12


def test_resume_from_last_in_a_new_process_like_run(tmp_path: Path) -> None:
    cb = ModelCheckpoint(every_n_train_steps=2, save_last=True)
    trainer(tmp_path, callbacks=[cb], max_epochs=1).fit(Regressor(), data())
    resumed = trainer(tmp_path, callbacks=[ModelCheckpoint(every_n_train_steps=2, save_last=True)])
    resumed.fit(Regressor(), data(), ckpt_path="last")
    assert resumed.global_step == 12
    assert resumed.checkpoint_callback.last_model_path.endswith("last.ckpt")


def test_last_without_a_checkpoint_starts_from_the_beginning(tmp_path: Path) -> None:
    tr = trainer(tmp_path, max_epochs=1)
    with pytest.warns(UserWarning, match=r"found no last checkpoint in .*checkpoints"):
        tr.fit(Regressor(), data(), ckpt_path="last")
    assert tr.global_step == 6


def test_stale_temporary_files_are_swept_at_fit_start(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    (folder / "notes.txt").write_text("mine")
    trainer(tmp_path, max_epochs=1).fit(Regressor(), data())
    assert names(folder) == ["epoch=0-step=6.ckpt", "notes.txt"]


def test_a_failed_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tr = trainer(
        tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(every_n_train_steps=1, save_last=True)]
    )
    real_save = torch.save

    def failing(obj: t.Any, f: t.Any, *a: t.Any, **k: t.Any) -> None:
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            f.write(b"PK\x03\x04 half")
            raise OSError("disk full")
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        tr.fit(Regressor(), data())
    folder = tmp_path / "checkpoints"
    assert names(folder) == ["epoch=0-step=3.ckpt", "last.ckpt"]  # no temporary file left
    verify(folder / "last.ckpt")
    assert safe_load(folder / "last.ckpt")["global_step"] == 3


# -- loading safely -------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    tr = trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    tr.fit(Regressor(), data())
    path = tmp_path / "good.ckpt"
    tr.save_checkpoint(path)
    return path


def _fit_from(tmp_path: Path, path: Path, **kwargs: t.Any) -> loopkit.Trainer:
    tr = trainer(tmp_path / "resume", enable_checkpointing=False)
    tr.fit(Regressor(), data(), ckpt_path=path, **kwargs)
    return tr


def test_truncated_checkpoint_is_named_not_a_pickle_traceback(tmp_path: Path, saved: Path) -> None:
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt' is truncated or corrupt") as err:
        _fit_from(tmp_path, bad)
    assert "Load an earlier checkpoint" in str(err.value)


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 64, os.urandom(2048)], ids=["empty", "zeros", "noise"]
)
def test_garbage_is_reported_as_corrupt(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt' is truncated or corrupt"):
        _fit_from(tmp_path, bad)


def test_a_flipped_byte_in_the_weights_is_caught(tmp_path: Path, saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    # The first parameter's bytes: find layer.weight's values in the archive and damage one.
    weight = safe_load(saved)["state_dict"]["layer.weight"].numpy().tobytes()
    at = bytes(raw).index(weight)
    raw[at] ^= 0x01
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(raw))
    assert torch.load(bad, weights_only=True)  # torch itself loads the damaged value silently
    with pytest.raises(CheckpointError, match=r"flipped\.ckpt' is corrupt: its record '.*data/"):
        _fit_from(tmp_path, bad)


class Payload:
    """Unpickling it would run code (os.system-like): it writes a marker file."""

    marker = ""

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (Path.write_text, (Path(self.marker), "code ran"))


class Trusted:
    def __init__(self) -> None:
        self.value = 3


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path, saved: Path) -> None:
    marker = tmp_path / "ran.txt"
    evil = safe_load(saved)
    Payload.marker = str(marker)
    evil["callbacks"] = {"Evil": Payload()}
    path = tmp_path / "evil.ckpt"
    torch.save(evil, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False") as err:
        _fit_from(tmp_path, path)
    assert "evil.ckpt" in str(err.value) and "safe_globals" in str(err.value)
    assert not marker.exists()  # nothing ran
    with pytest.raises(pickle.UnpicklingError):  # torch's loader refuses it too
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_trusted_types_load_by_explicit_opt_in(tmp_path: Path, saved: Path) -> None:
    ckpt = safe_load(saved)
    ckpt["extra"] = Trusted()
    path = tmp_path / "custom.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match="Trusted"):
        _fit_from(tmp_path, path)
    with torch.serialization.safe_globals([Trusted]):
        assert _fit_from(tmp_path, path).global_step == 12  # one more epoch after the saved one
    assert _fit_from(tmp_path, path, weights_only=False).global_step == 12


def test_a_checkpoint_of_another_model_names_the_file(tmp_path: Path, saved: Path) -> None:
    ckpt = safe_load(saved)
    ckpt["state_dict"] = {"layer.weight": torch.zeros(1, 3), "layer.bias": torch.zeros(1)}
    path = tmp_path / "other.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(
        CheckpointError, match=r"(?s)other\.ckpt' does not fit Regressor.*size mismatch"
    ):
        _fit_from(tmp_path, path)


def test_a_bare_state_dict_says_how_to_load_it(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(Regressor().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"no 'state_dict' entry.*module\.load_state_dict"):
        _fit_from(tmp_path, path)


def test_a_newer_format_is_refused(tmp_path: Path, saved: Path) -> None:
    ckpt = safe_load(saved)
    ckpt["format"] = 99
    path = tmp_path / "future.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"format 99.*Upgrade loopkit"):
        _fit_from(tmp_path, path)


def test_a_foreign_checkpoint_restores_weights_and_counters(tmp_path: Path) -> None:
    source = Regressor()
    with torch.no_grad():
        source.layer.weight.fill_(0.5)
    opt = torch.optim.SGD(source.parameters(), lr=0.1)
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "state_dict": source.state_dict(),
            "optimizer_states": [opt.state_dict()],
            "epoch": 1,
            "global_step": 6,
            "pytorch-lightning_version": "2.4.0",
        },
        path,
    )
    module = Regressor()
    tr = trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    with pytest.warns(
        UserWarning, match=r"not written by loopkit: restored the module, optimizers"
    ):
        tr.fit(module, data(), ckpt_path=path)
    assert (tr.current_epoch, tr.global_step) == (1, 6)  # max_epochs=1 already reached
    assert torch.equal(module.layer.weight, torch.full((1, 4), 0.5))


def test_precision_state_a_run_cannot_take_is_reported(tmp_path: Path, saved: Path) -> None:
    ckpt = safe_load(saved)
    ckpt["precision"] = {"scale": torch.tensor(1024.0)}
    path = tmp_path / "scaled.ckpt"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match=r"holds precision state \(scale\).*not restored"):
        _fit_from(tmp_path, path)


def test_gradients_of_an_open_window_are_kept(tmp_path: Path) -> None:
    pytest.importorskip("loopkit_accumulation")
    tr = trainer(tmp_path, accumulate_grad_batches=4, max_epochs=1, enable_checkpointing=False)
    seen: dict[str, t.Any] = {}

    def save(trainer: t.Any, batch_idx: int) -> None:
        if batch_idx in (1, 3):
            trainer.save_checkpoint(tmp_path / f"{batch_idx}.ckpt")
            seen[batch_idx] = trainer.lightning_module.layer.weight.grad.clone()

    tr.fabric.bus.connect(save, "on_train_batch_end", priority=-30_000)
    tr.fit(Regressor(), data())
    inside = safe_load(tmp_path / "1.ckpt")
    assert torch.equal(inside["gradients"]["layer.weight"], seen[1])  # batches 0-1 of 0-3
    assert "gradients" not in safe_load(tmp_path / "3.ckpt")  # the window closed with a step


def test_job_checkpoint_loads_without_warnings(tmp_path: Path) -> None:
    job.seed_all()
    tr = job.make_trainer(tmp_path, max_epochs=1)
    train, val = job.loaders()
    tr.fit(job.Net(), train, val)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = job.make_trainer(tmp_path, max_epochs=2)
        train, val = job.loaders()
        resumed.fit(job.Net(), train, val, ckpt_path="last")
    assert resumed.global_step == 12
