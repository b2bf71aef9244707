"""fabric.save / load / load_raw: what is written, how it is restored, and what is refused."""

from __future__ import annotations

import collections.abc as c
import os
import stat
import typing as t
from pathlib import Path

import pytest
import torch
from torch import nn

from loopkit import CheckpointError, Fabric
from loopkit import checkpoint as ckpt
from loopkit.checkpoint import CheckpointIO
from loopkit.precision import Precision
from loopkit.strategy import SingleDeviceStrategy


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


def _trained(steps: int = 2) -> tuple[Fabric, t.Any, t.Any, nn.Module, torch.optim.Optimizer]:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    model, optimizer = fabric.setup(net, opt)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        optimizer.zero_grad()
        fabric.backward(model(torch.randn(4, 3, generator=gen)).pow(2).mean())
        optimizer.step()
    return fabric, model, optimizer, net, opt


class Counter:
    """Not a module or optimizer, but stateful: saved through its state_dict()."""

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}

    def load_state_dict(self, state: c.Mapping[str, int]) -> None:
        self.n = state["n"]


def _equal_states(a: c.Mapping[str, t.Any], b: c.Mapping[str, t.Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- save ----------------------------------------------------------------------------------------


def test_the_file_holds_exactly_the_users_keys_as_state_dicts(tmp_path: Path) -> None:
    fabric, model, optimizer, net, opt = _trained()
    path = tmp_path / "run.ckpt"
    fabric.save(path, {"model": model, "optimizer": optimizer, "counter": Counter(5), "step": 2})
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["model", "optimizer", "counter", "step"]
    _equal_states(raw["model"], net.state_dict())  # the original's keys, no wrapper prefix
    assert raw["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    assert raw["counter"] == {"n": 5} and raw["step"] == 2


def test_save_accepts_the_older_argument_order(tmp_path: Path) -> None:
    fabric, model, _, net, _ = _trained()
    fabric.save(model.state_dict(), tmp_path / "weights.ckpt")
    _equal_states(fabric.load(tmp_path / "weights.ckpt"), net.state_dict())


def test_save_creates_folders_and_takes_string_paths(tmp_path: Path) -> None:
    fabric, model, *_ = _trained()
    target = tmp_path / "deep" / "er" / "last.ckpt"
    fabric.save(str(target), {"model": model})
    assert target.is_file()


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((3, {"a": 1}), TypeError, "needs a file path first"),
        (("x.ckpt", [1, 2]), TypeError, "needs a dict of named objects"),
    ],
)
def test_save_bad_arguments(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[t.Any, ...],
    error: type,
    match: str,
) -> None:
    fabric = Fabric(accelerator="cpu")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        fabric.save(*args)


def test_filter_keeps_the_selected_entries(tmp_path: Path) -> None:
    fabric, model, optimizer, _, _ = _trained()
    path = tmp_path / "f.ckpt"
    fabric.save(
        path,
        {"model": model, "optimizer": optimizer},
        filter={"model": lambda name, value: name.startswith("0.")},
    )
    raw = torch.load(path, weights_only=True)
    assert list(raw["model"]) == ["0.weight", "0.bias"]
    assert "state" in raw["optimizer"]
    with pytest.raises(KeyError, match="'ema'"):
        fabric.save(path, {"model": model}, filter={"ema": lambda n, v: True})
    with pytest.raises(TypeError, match=r"filter\['step'\]"):
        fabric.save(path, {"step": 3}, filter={"step": lambda n, v: True})


def test_only_rank_zero_writes_under_a_replicated_strategy(tmp_path: Path) -> None:
    barriers: list[str | None] = []

    class RankOne(SingleDeviceStrategy):
        @property
        def global_rank(self) -> int:
            return 1

        def barrier(self, name: str | None = None) -> None:
            barriers.append(name)

    fabric = Fabric(accelerator="cpu", strategy=RankOne())
    fabric.save(tmp_path / "r1.ckpt", {"step": 1})
    assert not (tmp_path / "r1.ckpt").exists()
    assert barriers == ["save"]  # everyone waits until the file is complete


def test_a_crash_while_writing_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fabric, model, *_ = _trained()
    path = tmp_path / "last.ckpt"
    fabric.save(path, {"model": model, "step": 1})
    before = path.read_bytes()

    real_save = torch.save

    def crash(obj: object, f: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half a file on disk...
        raise KeyboardInterrupt  # ...and the process is interrupted before it completes

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        fabric.save(path, {"model": model, "step": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left
    monkeypatch.undo()
    assert fabric.load(path)["step"] == 1


def test_a_checkpoint_gets_the_mode_a_plain_file_would(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.save(tmp_path / "a.ckpt", {"x": 1})
    (tmp_path / "plain").write_bytes(b"")
    mode = stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    os.chmod(tmp_path / "a.ckpt", 0o600)
    fabric.save(tmp_path / "a.ckpt", {"x": 2})  # overwriting keeps the file's own mode
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o600


# -- load ----------------------------------------------------------------------------------------


def test_load_restores_in_place_and_returns_the_rest(tmp_path: Path) -> None:
    fabric, model, optimizer, net, opt = _trained()
    path = tmp_path / "run.ckpt"
    fabric.save(
        path, {"model": model, "optimizer": optimizer, "counter": Counter(5), "step": 2, "x": 9}
    )

    fresh_fabric = Fabric(accelerator="cpu")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    fresh_model, fresh_optimizer = fresh_fabric.setup(fresh, fresh_opt)
    counter = Counter()
    state: dict[str, t.Any] = {
        "model": fresh_model, "optimizer": fresh_optimizer, "counter": counter, "step": 0
    }  # fmt: skip
    rest = fresh_fabric.load(path, state)
    assert rest == {"x": 9}
    _equal_states(fresh.state_dict(), net.state_dict())
    assert fresh_opt.param_groups[0]["lr"] == 0.01
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert counter.n == 5
    assert state["step"] == 2  # plain values are written back
    assert state["model"] is fresh_model and state["counter"] is counter  # objects stay


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path: Path) -> None:
    fabric, model, optimizer, net, _ = _trained(steps=3)
    fabric.save(tmp_path / "mid.ckpt", {"model": model, "optimizer": optimizer})

    def more(fab: Fabric, mod: t.Any, opt: t.Any) -> None:
        gen = torch.Generator().manual_seed(11)
        for _ in range(2):
            opt.zero_grad()
            fab.backward(mod(torch.randn(4, 3, generator=gen)).pow(2).mean())
            opt.step()

    more(fabric, model, optimizer)
    other = Fabric(accelerator="cpu")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    fresh_model, fresh_optimizer = other.setup(fresh, torch.optim.Adam(fresh.parameters()))
    other.load(tmp_path / "mid.ckpt", {"model": fresh_model, "optimizer": fresh_optimizer})
    more(other, fresh_model, fresh_optimizer)
    _equal_states(fresh.state_dict(), net.state_dict())


def test_strict_load_names_the_missing_keys(tmp_path: Path) -> None:
    fabric, model, optimizer, *_ = _trained()
    path = tmp_path / "model_only.ckpt"
    fabric.save(path, {"model": model})
    with pytest.raises(KeyError, match=r"no entry for 'optimizer', 'epoch'.*holds 'model'"):
        fabric.load(path, {"model": model, "optimizer": optimizer, "epoch": 0})
    state = {"model": model, "epoch": 7}
    assert fabric.load(path, state, strict=False) == {}
    assert state["epoch"] == 7  # left as it was


def test_strict_load_of_a_module_with_other_keys_fails_and_non_strict_loads(
    tmp_path: Path,
) -> None:
    fabric = Fabric(accelerator="cpu")
    small = nn.Sequential(nn.Linear(3, 4))
    fabric.save(tmp_path / "small.ckpt", {"model": small})
    big = _net()
    with pytest.raises(RuntimeError, match="Missing key"):
        fabric.load(tmp_path / "small.ckpt", {"model": big})
    fabric.load(tmp_path / "small.ckpt", {"model": big}, strict=False)
    assert torch.equal(big[0].weight, small[0].weight)


def test_load_without_state_returns_the_whole_checkpoint(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.save(tmp_path / "c.ckpt", {"a": 1, "b": [torch.ones(2)]})
    loaded = fabric.load(tmp_path / "c.ckpt")
    assert loaded["a"] == 1 and torch.equal(loaded["b"][0], torch.ones(2))


def test_loading_a_bare_tensor_into_named_state_is_an_error(tmp_path: Path) -> None:
    torch.save(torch.ones(1), tmp_path / "t.pt")
    with pytest.raises(TypeError, match="holds a Tensor, not a dict"):
        Fabric(accelerator="cpu").load(tmp_path / "t.pt", {"model": _net()})


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fabric.load(tmp_path / "nope.ckpt")
    fabric.save(tmp_path / "c.ckpt", {"model": _net()})
    data = (tmp_path / "c.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt' is truncated or corrupt"):
        fabric.load(tmp_path / "cut.ckpt")


class Trap:
    """Unpickling this runs code: it creates the file named at pickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": Trap(marker)}, tmp_path / "evil.ckpt")
    torch.save(Trap(marker), tmp_path / "evil_raw.pt")
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(CheckpointError, match=r"could run code.*weights_only=False"):
        fabric.load(tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        fabric.load(tmp_path / "evil.ckpt", {"model": {}})
    with pytest.raises(CheckpointError, match="could run code"):
        fabric.load_raw(tmp_path / "evil_raw.pt", _net())
    assert not marker.exists()


def test_weights_only_false_loads_trusted_objects(tmp_path: Path) -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.save(tmp_path / "obj.ckpt", {"counter_object": [Counter(3)]})  # a list: kept as is
    with pytest.raises(CheckpointError):
        fabric.load(tmp_path / "obj.ckpt")
    loaded = fabric.load(tmp_path / "obj.ckpt", weights_only=False)
    assert loaded["counter_object"][0].n == 3


# -- load_raw ------------------------------------------------------------------------------------


def test_load_raw_reads_a_bare_state_dict_into_a_module_or_optimizer(tmp_path: Path) -> None:
    _, _, _, net, opt = _trained()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.save(opt.state_dict(), tmp_path / "opt.pt")

    other = Fabric(accelerator="cpu")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    fresh_model, fresh_optimizer = other.setup(fresh, fresh_opt)
    other.load_raw(tmp_path / "weights.pt", fresh_model)
    other.load_raw(tmp_path / "opt.pt", fresh_optimizer)
    _equal_states(fresh.state_dict(), net.state_dict())
    assert fresh_opt.param_groups[0]["lr"] == 0.01
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    other.load_raw(tmp_path / "weights.pt", plain)  # an unwrapped module works too
    _equal_states(plain.state_dict(), net.state_dict())


def test_load_raw_needs_something_with_load_state_dict(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(TypeError, match="dict has no load_state_dict"):
        Fabric(accelerator="cpu").load_raw(tmp_path / "w.pt", {})


def test_load_raw_strict(tmp_path: Path) -> None:
    torch.save(nn.Linear(3, 4).state_dict(), tmp_path / "w.pt")
    target = nn.Sequential(nn.Linear(3, 4))
    fabric = Fabric(accelerator="cpu")
    with pytest.raises(RuntimeError, match="Missing key"):
        fabric.load_raw(tmp_path / "w.pt", target)
    fabric.load_raw(tmp_path / "w.pt", target, strict=False)


# -- loopkit's own state and the checkpoint_io slot ---------------------------------------------


class ScalerPrecision(Precision):
    """A precision with state of its own, as a grad scaler has."""

    def __init__(self) -> None:
        self.scale = 1024.0

    def state_dict(self) -> dict[str, t.Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: c.Mapping[str, t.Any]) -> None:
        self.scale = float(state["scale"])


def test_precision_state_is_saved_by_putting_the_precision_in_state(tmp_path: Path) -> None:
    precision = ScalerPrecision()
    fabric = Fabric(accelerator="cpu", precision=precision)
    precision.scale = 64.0
    fabric.save(tmp_path / "p.ckpt", {"precision": fabric.precision})
    assert torch.load(tmp_path / "p.ckpt") == {"precision": {"scale": 64.0}}
    restored = ScalerPrecision()
    Fabric(accelerator="cpu", precision=restored).load(tmp_path / "p.ckpt", {"precision": restored})
    assert restored.scale == 64.0


def test_a_checkpoint_io_plugin_writes_and_reads(tmp_path: Path) -> None:
    calls: list[str] = []

    class Recording(CheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, t.Any], path: Path) -> None:
            calls.append(f"save {path.name}")
            super().save_checkpoint(checkpoint, path)

        def load_checkpoint(
            self, path: Path, *, map_location: t.Any = "cpu", weights_only: bool = True
        ) -> t.Any:
            calls.append(f"load {path.name} weights_only={weights_only}")
            return super().load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )

    fabric = Fabric(accelerator="cpu", plugins=[Recording()])
    fabric.save(tmp_path / "io.ckpt", {"step": 4})
    state = {"step": 0}
    fabric.load(tmp_path / "io.ckpt", state)
    assert state == {"step": 4}
    assert calls == ["save io.ckpt", "load io.ckpt weights_only=True"]
    Recording().remove_checkpoint(tmp_path / "io.ckpt")
    assert not (tmp_path / "io.ckpt").exists()


def test_a_checkpoint_io_without_the_methods_is_refused() -> None:
    class Half:
        kind = "checkpoint_io"

        def save_checkpoint(self, checkpoint: t.Any, path: Path) -> None: ...

    with pytest.raises(TypeError, match="has no load_checkpoint"):
        Fabric(accelerator="cpu", plugins=[Half()])
