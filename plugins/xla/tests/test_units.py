"""The strategies' own logic, with the runtime answered by a fake (tests/fake_runtime.py).

Replicas are threads that really exchange gradients, so these tests check what a multi-replica
run computes (sampler sharding, gradient averaging, the master's result and checkpoint) without
torch_xla: they run in any environment that has loopkit core and this plugin.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from fake_runtime import FakeRuntime
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from loopkit import Fabric, registry
from loopkit.plugins import PluginNotFoundError
from loopkit_xla import XLAAccelerator, XLASPMDStrategy, XLAStrategy

HAS_TORCH_XLA = importlib.util.find_spec("torch_xla") is not None

_gen = torch.Generator().manual_seed(1)
X = torch.randn(16, 4, generator=_gen)
Y = torch.randn(16, 1, generator=_gen)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


torch.manual_seed(0)
#: Replicas are threads here, and torch's global generator is shared between threads: models are
#: built from these weights rather than from a seed.
INITIAL = _net().state_dict()


def make_model() -> nn.Module:
    model = _net()
    model.load_state_dict(INITIAL)
    return model


def xla_fabric(rt: FakeRuntime, devices: int | str = "auto", **kwargs: object) -> Fabric:
    return Fabric(
        accelerator=XLAAccelerator(rt),
        strategy=XLAStrategy(start_method="spawn", runtime=rt),
        devices=devices,
        **kwargs,  # type: ignore[arg-type]
    )


# -- functions run in the replicas (module level: the payload is pickled) ----------------------


def train(fabric: Fabric, epochs: int = 2, clip: float | None = None) -> dict[str, object]:
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(X, Y), batch_size=4))
    seen = []
    for _ in range(epochs):
        for xb, yb in loader:
            seen.append(xb)
            loss = F.mse_loss(model(xb), yb)
            fabric.backward(loss)
            if clip is not None:
                fabric.clip_gradients(model, opt, max_norm=clip)
            opt.step()
            opt.zero_grad()
    return {
        "rank": fabric.global_rank,
        "local_rank": fabric.local_rank,
        "node_rank": fabric.node_rank,
        "world": fabric.world_size,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "first_epoch": torch.cat(seen[: len(seen) // epochs]),
    }


def reference(epochs: int = 2, batch_size: int = 8, clip: float | None = None) -> dict:
    """The same training in plain PyTorch, one process, on the global batch."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        for xb, yb in DataLoader(TensorDataset(X, Y), batch_size=batch_size):
            loss = F.mse_loss(model(xb), yb)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
    return model.state_dict()


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def save_per_rank(fabric: Fabric, folder: str) -> int:
    model = fabric.setup(make_model())
    fabric.save(Path(folder) / "ckpt.pt", {"model": model, "step": 3})
    fabric.barrier("saved")
    return fabric.global_rank


def collectives(fabric: Fabric) -> dict[str, object]:
    rank = fabric.global_rank
    return {
        "sum": fabric.all_reduce(torch.tensor([rank + 1.0]), reduce_op="sum"),
        "mean": fabric.all_reduce(rank + 1, reduce_op="mean"),
        "max": fabric.all_reduce(torch.tensor(float(rank)), reduce_op="max"),
        "gather": fabric.all_gather(torch.tensor([rank, 10 * rank])),
        "broadcast": fabric.broadcast({"from": rank}, src=1),
    }


# -- registration -----------------------------------------------------------------------------


def test_names_resolve_to_the_strategies_and_the_accelerator() -> None:
    reg = registry()
    for name in ("xla", "xla_spmd", "tpu"):
        assert name in reg
    assert reg.load("xla") is XLAStrategy
    assert reg.load("xla_spmd") is XLASPMDStrategy
    assert reg.load("tpu") is XLAAccelerator
    # "xla" is a strategy that also stands for the accelerator of that name.
    assert XLAStrategy.provides["accelerator"] is XLAAccelerator
    assert XLAAccelerator.default_strategy == "xla"
    with pytest.raises(PluginNotFoundError, match="'tpu' is a accelerator plugin, not a strategy"):
        reg.create("strategy", "tpu")


@pytest.mark.skipif(HAS_TORCH_XLA, reason="torch_xla is installed here")
def test_without_torch_xla_naming_xla_says_what_to_install() -> None:
    for kwargs in ({"accelerator": "xla"}, {"accelerator": "tpu"}, {"strategy": "xla_spmd"}):
        with pytest.raises(ImportError, match=r"needs torch_xla.*pip install torch==2\.9\.0"):
            Fabric(**kwargs)  # type: ignore[arg-type]


def test_strategy_refuses_a_non_xla_accelerator() -> None:
    rt = FakeRuntime()
    message = r"strategy='xla' runs on XLA devices.*'cpu'.*accelerator='xla'"
    with pytest.raises(ValueError, match=message):
        Fabric(accelerator="cpu", strategy=XLAStrategy(runtime=rt))
    with pytest.raises(ValueError, match="start_method='thread'"):
        XLAStrategy(start_method="thread", runtime=rt)


def test_auto_strategy_on_the_xla_accelerator_is_xla() -> None:
    fabric = Fabric(accelerator=XLAAccelerator(FakeRuntime(1)), devices=1)
    assert isinstance(fabric.strategy, XLAStrategy)
    assert fabric.device.type in ("xla", "cpu")  # planned device until the environment is set up


# -- devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "expected"),
    [(1, [0]), (4, [0, 1, 2, 3]), (-1, [0, 1, 2, 3]), ("auto", [0, 1, 2, 3]), ("4", [0, 1, 2, 3]),
     ([2], [2]), ("2,", [2]), ([3, 2, 1, 0], [0, 1, 2, 3])],
)  # fmt: skip
def test_devices_are_one_or_every_device_of_the_host(devices: object, expected: list[int]) -> None:
    assert XLAAccelerator(FakeRuntime(4)).parse_devices(devices) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("devices", [2, 3, 8, [0, 1], [5], "two"])
def test_other_device_counts_are_refused_with_the_host_count(devices: object) -> None:
    with pytest.raises(ValueError, match=r"devices=.*xla accelerator") as info:
        XLAAccelerator(FakeRuntime(4)).parse_devices(devices)  # type: ignore[arg-type]
    assert "4" in str(info.value)


def test_setup_without_launch_with_several_devices_says_to_launch() -> None:
    fabric = xla_fabric(FakeRuntime(2))
    assert fabric.world_size == 1 and not fabric.strategy.launched
    with pytest.raises(RuntimeError, match=r"devices=2 .*fabric\.launch\(train\)"):
        fabric.setup(make_model())


# -- replicas ---------------------------------------------------------------------------------


def test_replicas_train_data_parallel_like_one_process_on_the_global_batch() -> None:
    rt = FakeRuntime(2)
    fabric = xla_fabric(rt)
    out = fabric.launch(train)
    # launch returns the master ordinal's result
    assert (out["rank"], out["local_rank"], out["node_rank"], out["world"]) == (0, 0, 0, 2)
    assert_close(out["state"], reference(batch_size=8))
    # the sampler gave ordinal 0 every other sample
    assert torch.equal(out["first_epoch"], X[0::2])
    # one reduction and one graph cut per optimizer step, on each replica
    steps = 2 * 2  # epochs * batches per replica
    assert rt.counts[(0, "reduce_gradients")] == rt.counts[(1, "reduce_gradients")] == steps
    assert rt.counts[(0, "sync")] == rt.counts[(1, "sync")] == steps
    assert rt.count("device_loader") == 2 * 2  # each replica's loader, each epoch
    assert rt.launches == ["spawn"]


def epoch_orders(fabric: Fabric) -> list[list[int]]:
    dataset = TensorDataset(torch.arange(16))
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=4, shuffle=True))
    return [[int(i) for (batch,) in loader for i in batch] for _ in range(2)]


def test_the_sampler_epoch_reaches_through_the_device_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOOPKIT_GLOBAL_SEED", raising=False)
    orders = xla_fabric(FakeRuntime(2)).launch(epoch_orders)
    expected = []
    for epoch in range(2):
        sampler = DistributedSampler(range(16), num_replicas=2, rank=0, shuffle=True, seed=0)
        sampler.set_epoch(epoch)
        expected.append(list(sampler))
    assert orders == expected and orders[0] != orders[1]


def test_clipping_sees_the_averaged_gradients_and_reduces_once() -> None:
    rt = FakeRuntime(2)
    out = xla_fabric(rt).launch(train, epochs=1, clip=0.05)
    assert_close(out["state"], reference(epochs=1, clip=0.05))
    assert rt.count("reduce_gradients") == 2 * 2  # 2 steps on each of 2 replicas


def step_with_closure(fabric: Fabric) -> dict:
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    half = X[:8].view(2, 4, 4)[fabric.global_rank], Y[:8].view(2, 4, 1)[fabric.global_rank]
    grads: list[torch.Tensor] = []

    class Watch:
        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            grads.append(next(iter(optimizer.param_groups[0]["params"])).grad.clone())

    fabric.bus.connect(Watch())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(half[0]), half[1])
        fabric.backward(loss)
        return loss

    opt.step(closure=closure)
    return {"state": model.state_dict(), "hook_grad": grads[0]}


def test_a_step_closure_is_reduced_after_it_ran() -> None:
    rt = FakeRuntime(2)
    out = xla_fabric(rt).launch(step_with_closure)
    expected = make_model()
    F.mse_loss(expected(X[:8]), Y[:8]).backward()
    torch.optim.SGD(expected.parameters(), lr=0.1).step()
    assert_close(out["state"], expected.state_dict())
    assert rt.count("reduce_gradients") == 2
    # on_before_optimizer_step fires inside the closure, before the step's reduction: it sees
    # this replica's own gradients (docs/xla.md says so)
    ours = make_model()
    F.mse_loss(ours(X[0:4]), Y[0:4]).backward()
    torch.testing.assert_close(out["hook_grad"], next(ours.parameters()).grad)


def test_only_the_master_ordinal_writes_checkpoints(tmp_path: Path) -> None:
    rt = FakeRuntime(2)
    rank = xla_fabric(rt).launch(save_per_rank, str(tmp_path))
    assert rank == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["step"] == 3
    assert all(v.device.type == "cpu" for v in saved["model"].values())
    assert_close(saved["model"], make_model().state_dict())
    assert (0, "loopkit.barrier.save") in rt.tags and (1, "loopkit.barrier.save") in rt.tags


def test_collectives_go_through_the_runtime() -> None:
    out = xla_fabric(FakeRuntime(2)).launch(collectives)
    assert torch.equal(out["sum"], torch.tensor([3.0]))
    assert out["mean"].item() == 1.5
    assert out["max"].item() == 1.0
    assert torch.equal(out["gather"], torch.tensor([[0, 0], [1, 10]]))
    assert out["broadcast"] == {"from": 1}


def test_one_device_runs_in_this_process_without_collectives() -> None:
    rt = FakeRuntime(1)
    out = xla_fabric(rt, devices=1).launch(train, epochs=1)
    assert (out["rank"], out["world"]) == (0, 1)
    assert_close(out["state"], reference(epochs=1, batch_size=4))
    assert rt.launches == [] and rt.count("reduce_gradients") == 0
    assert rt.count("sync") == 4  # 16 samples / batch 4: one cut per optimizer step


def failing(fabric: Fabric) -> None:
    raise KeyError(f"boom on {fabric.global_rank}")


def test_a_failing_replica_fails_the_launch() -> None:
    with pytest.raises(KeyError, match="boom on"):
        xla_fabric(FakeRuntime(2)).launch(failing)


def test_spawn_needs_a_picklable_function() -> None:
    fabric = xla_fabric(FakeRuntime(2))
    with pytest.raises(TypeError, match=r"start_method='spawn' pickles .*start_method='fork'"):
        fabric.launch(lambda f: f.global_rank)


def test_fork_passes_the_function_without_pickling_it() -> None:
    rt = FakeRuntime(2)
    fabric = Fabric(accelerator=XLAAccelerator(rt), strategy=XLAStrategy(runtime=rt))
    calls: list[str] = []

    def body(fab: Fabric) -> str:  # a closure: it cannot be pickled, and need not be
        calls.append("ran")
        return "done"

    assert fabric.launch(body) == "done"
    assert calls == ["ran", "ran"] and rt.launches == ["fork"]


def test_launch_refuses_a_started_runtime_and_cpu_replicas() -> None:
    rt = FakeRuntime(2)
    rt.started = True
    with pytest.raises(RuntimeError, match=r"already started .*before fabric\.launch"):
        xla_fabric(rt).launch(train)
    with pytest.raises(RuntimeError, match=r"on the CPU: .*hang.*strategy='xla_spmd'"):
        xla_fabric(FakeRuntime(2, kind="CPU")).launch(train)


def test_replicas_running_as_threads_of_one_process_are_refused() -> None:
    with pytest.raises(RuntimeError, match=r"runs 2 XLA replicas as threads"):
        xla_fabric(FakeRuntime(2, threads=2)).launch(train)


def test_no_backward_sync_warns_once_and_changes_nothing() -> None:
    rt = FakeRuntime(1)
    fabric = xla_fabric(rt, devices=1)
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    message = "XLAStrategy does not support no_backward_sync"
    with pytest.warns(UserWarning, match=message), fabric.no_backward_sync(model):
        fabric.backward(F.mse_loss(model(X[:8]), Y[:8]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fabric.no_backward_sync(model):
            fabric.backward(F.mse_loss(model(X[8:]), Y[8:]))
    opt.step()
    expected = make_model()
    (F.mse_loss(expected(X[:8]), Y[:8]) + F.mse_loss(expected(X[8:]), Y[8:])).backward()
    torch.optim.SGD(expected.parameters(), lr=0.1).step()
    assert_close(model.state_dict(), expected.state_dict())


def test_the_strategy_pickles_without_its_step_bookkeeping() -> None:
    strategy = XLAStrategy(runtime=FakeRuntime(2))
    strategy._reduced.add(123)
    assert pickle.loads(pickle.dumps(strategy))._reduced == set()


# -- SPMD -------------------------------------------------------------------------------------


def test_spmd_is_one_process_over_every_device_with_the_batch_sharded() -> None:
    rt = FakeRuntime(4)
    fabric = Fabric(accelerator=XLAAccelerator(rt), strategy=XLASPMDStrategy(runtime=rt))
    model = make_model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert rt.spmd and fabric.world_size == 1 and fabric.strategy.num_devices == 4
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(X, Y), batch_size=8))
    for xb, yb in loader:
        fabric.backward(F.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
    assert rt.count("shard_batch") == 2 * 2  # x and y of each of 2 batches
    assert rt.count("sync") == 2 and rt.count("reduce_gradients") == 0
    assert_close(model.state_dict(), reference(epochs=1, batch_size=8))
    # a batch dimension the device count does not divide is replicated, not sharded
    fabric.to_device(torch.zeros(3))
    fabric.strategy.batch_to_device({"odd": torch.zeros(3, 2), "scalar": torch.tensor(1.0)})
    assert rt.count("shard_batch") == 4


def test_spmd_spans_every_device() -> None:
    rt = FakeRuntime(4)
    with pytest.raises(ValueError, match=r"'xla_spmd' spans every device of the host \(4 here\)"):
        Fabric(accelerator=XLAAccelerator(rt), strategy=XLASPMDStrategy(runtime=rt), devices=1)
