"""Fabric's methods on one CPU process: what each does, and what bad input gets back."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
import typing as t
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from loopkit import Fabric
from loopkit.accelerator import CPUAccelerator
from loopkit.plugins import PluginNotFoundError
from loopkit.precision import Precision
from loopkit.strategy import SingleDeviceStrategy, move_to_device


@pytest.fixture(autouse=True)
def _seed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # seed_everything records the seed in the environment; keep it out of other tests.
    for key in ("LOOPKIT_GLOBAL_SEED", "LOOPKIT_SEED_WORKERS"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


class RankStrategy(SingleDeviceStrategy):
    """One process that claims another rank, recording what Fabric asks of it."""

    def __init__(self, rank: int = 0) -> None:
        super().__init__()
        self.rank = rank
        self.calls: list[str] = []

    @property
    def global_rank(self) -> int:
        return self.rank

    @property
    def local_rank(self) -> int:
        return self.rank

    def setup_environment(self) -> None:
        self.calls.append("setup_environment")
        super().setup_environment()

    def module_to_device(self, module: nn.Module) -> None:
        self.calls.append("module_to_device")
        super().module_to_device(module)

    def barrier(self, name: str | None = None) -> None:
        self.calls.append(f"barrier:{name}")

    def backward(self, loss: torch.Tensor, module: nn.Module | None, *a: t.Any, **k: t.Any) -> None:
        self.calls.append("backward")
        super().backward(loss, module, *a, **k)

    def optimizer_step(self, optimizer: t.Any, closure: t.Any = None, **kwargs: t.Any) -> t.Any:
        self.calls.append("optimizer_step")
        return super().optimizer_step(optimizer, closure, **kwargs)


# -- construction --------------------------------------------------------------------------------


def test_defaults_are_one_cpu_process() -> None:
    fabric = Fabric(accelerator="cpu")
    assert fabric.device == torch.device("cpu")
    assert (fabric.global_rank, fabric.local_rank, fabric.node_rank, fabric.world_size) == (
        0, 0, 0, 1,
    )  # fmt: skip
    assert fabric.is_global_zero
    assert type(fabric.strategy) is SingleDeviceStrategy
    assert isinstance(fabric.accelerator, CPUAccelerator)
    assert type(fabric.precision) is Precision
    assert fabric.loggers == [] and fabric.logger is None


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Fabric("cpu")  # type: ignore[misc]


@pytest.mark.parametrize("precision", [None, 32, "32", "32-true"])
def test_full_precision_names(precision: t.Any) -> None:
    assert type(Fabric(accelerator="cpu", precision=precision).precision) is Precision


def test_unknown_precision_lists_the_installed_ones() -> None:
    with pytest.raises(PluginNotFoundError) as info:
        Fabric(accelerator="cpu", precision="fp3-magic")
    message = str(info.value)
    assert "'fp3-magic'" in message and "32-true" in message


def test_unknown_strategy_lists_the_installed_ones() -> None:
    with pytest.raises(PluginNotFoundError, match=r"'dp'.*single_device"):
        Fabric(accelerator="cpu", strategy="dp")


def test_first_party_name_not_installed_names_its_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import loopkit.fabric
    from loopkit.plugins import Registry

    empty = Registry(entry_points=[])  # an environment where no plugin is installed
    monkeypatch.setattr(loopkit.fabric, "registry", lambda: empty)
    with pytest.raises(PluginNotFoundError, match="pip install loopkit-ddp"):
        Fabric(accelerator="cpu", strategy="ddp")
    with pytest.raises(PluginNotFoundError, match="pip install loopkit-precision"):
        Fabric(accelerator="cpu", precision="bf16-mixed")
    # the embedded names need no installed plugin at all
    assert type(Fabric(accelerator="cpu", strategy="single_device").precision) is Precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_accelerator_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="accelerator='cuda' is not available"):
        Fabric(accelerator="cuda")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_nodes": 0}, ValueError, "num_nodes=0"),
        ({"devices": 0}, ValueError, "devices=0"),
        ({"devices": "many"}, ValueError, "devices='many'"),
        ({"precision": True}, TypeError, "precision=True"),
        ({"accelerator": 3}, TypeError, "accelerator=3"),
        ({"strategy": 3.5}, TypeError, "strategy=3.5"),
        ({"strategy": "single_device", "devices": 2}, ValueError, "runs one process"),
        ({"loggers": object()}, TypeError, "log_metrics"),
        ({"plugins": [Precision(), Precision()]}, ValueError, "two precision plugins"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, t.Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Fabric(accelerator=kwargs.pop("accelerator", "cpu"), **kwargs)


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        ([], r"devices=\[\]: a list of devices"),
        (["0"], "holds device indices"),
        ([0, 0], "names a device twice"),
    ],
)
def test_bad_device_lists(devices: list[t.Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Fabric(accelerator="cpu", devices=devices)


@pytest.mark.skipif(torch.cuda.device_count() > 4, reason="needs at most 4 CUDA devices")
def test_more_devices_than_the_machine_has_names_what_was_asked() -> None:
    from loopkit.accelerator import CUDAAccelerator

    count = CUDAAccelerator.device_count()
    with pytest.raises(ValueError, match=rf"devices=5 asks for cuda devices .* has {count}\)"):
        CUDAAccelerator().parse_devices(5)
    with pytest.raises(ValueError, match=r"devices=\[7\] asks for cuda devices"):
        CUDAAccelerator().parse_devices([7])


def test_environment_fills_arguments_left_at_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPKIT_STRATEGY", "dp")
    with pytest.raises(PluginNotFoundError, match="'dp'"):
        Fabric(accelerator="cpu")
    fabric = Fabric(accelerator="cpu", strategy="single_device")
    assert type(fabric.strategy) is SingleDeviceStrategy


def test_precision_plugin_instance_in_plugins_fills_the_slot() -> None:
    precision = Precision()
    assert Fabric(accelerator="cpu", plugins=[precision]).precision is precision


# -- setup -----------------------------------------------------------------------------------------


def test_setup_returns_the_module_alone_without_optimizers() -> None:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    model = fabric.setup(net)
    assert model.module is net


def test_setup_returns_module_and_every_optimizer_in_order() -> None:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    a = torch.optim.SGD(net[0].parameters(), lr=0.1)
    b = torch.optim.Adam(net[2].parameters())
    _, wa, wb = fabric.setup(net, a, b)
    assert (wa.optimizer, wb.optimizer) == (a, b)


def test_setup_module_then_setup_optimizers() -> None:
    fabric = Fabric(accelerator="cpu")
    g, d = _net(), _net()
    fabric.setup_module(g)
    fabric.setup_module(d)
    one = fabric.setup_optimizers(torch.optim.SGD(g.parameters(), lr=0.1))
    both = fabric.setup_optimizers(torch.optim.SGD([*g.parameters(), *d.parameters()], lr=0.1))
    two = fabric.setup_optimizers(torch.optim.SGD(g.parameters()), torch.optim.SGD(d.parameters()))
    assert isinstance(one, torch.optim.SGD) and isinstance(both, torch.optim.SGD)
    assert len(two) == 2


def test_optimizer_set_up_without_its_model_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    with pytest.raises(ValueError, match=r"SGD optimizes 4 parameter\(s\) of no module set up"):
        fabric.setup_optimizers(torch.optim.SGD(net.parameters(), lr=0.1))


def test_optimizer_of_another_model_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu")
    net, other = _net(), _net()
    with pytest.raises(ValueError, match="not parameters of Sequential"):
        fabric.setup(net, torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (lambda net: (torch.optim.SGD(net.parameters(), lr=0.1),), "takes a torch.nn.Module"),
        (lambda net: (net, "adam"), "got str"),
    ],
)
def test_setup_bad_arguments(args: t.Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Fabric(accelerator="cpu").setup(*args(_net()))


def test_setup_moves_to_device_unless_told_not_to() -> None:
    strategy = RankStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    fabric.setup(_net())
    fabric.setup(_net(), move_to_device=False)
    assert strategy.calls.count("module_to_device") == 1
    assert strategy.calls.count("setup_environment") == 1  # once, at the first set-up


class Doubling(Precision):
    """An active precision: inputs doubled, outputs negated, forward inside a context."""

    active = True

    def __init__(self) -> None:
        self.events: list[str] = []

    def convert_module(self, module: nn.Module) -> nn.Module:
        self.events.append("convert_module")
        return module.double()

    def convert_input(self, data: t.Any) -> t.Any:
        args, kwargs = data
        return tuple(a * 2 for a in args), kwargs

    def convert_output(self, data: t.Any) -> t.Any:
        return -data

    @contextlib.contextmanager
    def forward_context(self) -> t.Iterator[None]:
        self.events.append("enter")
        yield
        self.events.append("exit")

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self.events.append("unscale")


def test_forward_runs_through_the_precision() -> None:
    precision = Doubling()
    fabric = Fabric(accelerator="cpu", precision=precision)
    net = _net()
    model = fabric.setup(net)
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(model(x), -net(x * 2))
    assert precision.events == ["convert_module", "enter", "exit"]
    assert net[0].weight.dtype == torch.float64
    with fabric.autocast():
        pass
    assert precision.events[-2:] == ["enter", "exit"]


# -- backward and the step ---------------------------------------------------------------------


def test_backward_before_setup_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu")
    loss = _net()(torch.randn(2, 3)).sum()
    with pytest.raises(RuntimeError, match=r"before any module was set up.*fabric\.setup"):
        fabric.backward(loss)


def test_backward_with_a_model_that_was_not_set_up_is_an_error() -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.setup(_net())
    stray = _net()
    with pytest.raises(ValueError, match="Sequential that was not set up"):
        fabric.backward(stray(torch.randn(2, 3)).sum(), model=stray)


def test_backward_gives_the_gradients_of_loss_backward() -> None:
    fabric = Fabric(accelerator="cpu")
    net, plain = _net(), _net()
    model = fabric.setup(net)
    x = torch.randn(5, 3)
    fabric.backward(model(x).pow(2).sum())
    plain(x).pow(2).sum().backward()
    for a, b in zip(net.parameters(), plain.parameters()):
        assert torch.equal(t.cast(torch.Tensor, a.grad), t.cast(torch.Tensor, b.grad))


def test_backward_passes_extra_arguments_to_autograd() -> None:
    fabric = Fabric(accelerator="cpu")
    model = fabric.setup(_net())
    loss = model(torch.randn(2, 3)).sum()
    fabric.backward(loss, retain_graph=True)
    fabric.backward(loss)  # the graph was kept for a second pass


def test_backward_with_two_models_needs_no_model_argument() -> None:
    fabric = Fabric(accelerator="cpu")
    g, d = fabric.setup(_net()), fabric.setup(_net())
    fabric.backward(d(g(torch.randn(2, 3)).expand(2, 3)).sum())
    assert all(p.grad is not None for p in g.parameters())


def test_a_strategy_that_overrides_the_step_is_used() -> None:
    strategy = RankStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(2, 3)).sum())
    optimizer.step()
    assert strategy.calls[-2:] == ["backward", "optimizer_step"]


def test_training_through_fabric_equals_plain_pytorch() -> None:
    fabric = Fabric(accelerator="cpu")
    net, plain = _net(), _net()
    model, optimizer = fabric.setup(net, torch.optim.Adam(net.parameters(), lr=0.01))
    plain_opt = torch.optim.Adam(plain.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen)
        optimizer.zero_grad()
        fabric.backward(model(x).pow(2).mean())
        optimizer.step()
        plain_opt.zero_grad()
        plain(x).pow(2).mean().backward()
        plain_opt.step()
    for a, b in zip(net.parameters(), plain.parameters()):
        assert torch.equal(a, b)


# -- clip_gradients ------------------------------------------------------------------------------


def _with_grads(scale: float = 1.0) -> tuple[Fabric, t.Any, t.Any, nn.Module]:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(4, 3)).sum() * scale)
    return fabric, model, optimizer, net


def _grad_norm(net: nn.Module) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(t.cast(torch.Tensor, p.grad)) for p in net.parameters()]
    return torch.linalg.vector_norm(torch.stack(norms))


def test_clip_gradients_by_norm_returns_the_total_norm() -> None:
    fabric, model, optimizer, net = _with_grads(scale=100.0)
    expected = _grad_norm(net)
    norm = fabric.clip_gradients(model, optimizer, max_norm=1.0)
    assert norm is not None and torch.allclose(norm, expected)
    assert float(expected) > 1.0
    assert float(_grad_norm(net)) == pytest.approx(1.0, rel=1e-4)


def test_clip_gradients_by_value() -> None:
    fabric, model, optimizer, net = _with_grads(scale=100.0)
    assert fabric.clip_gradients(model, optimizer, clip_val=0.01) is None
    assert max(float(t.cast(torch.Tensor, p.grad).abs().max()) for p in net.parameters()) <= 0.01


@pytest.mark.parametrize("kwargs", [{}, {"clip_val": 1.0, "max_norm": 1.0}])
def test_clip_gradients_needs_exactly_one_mode(kwargs: dict[str, float]) -> None:
    fabric, model, optimizer, _ = _with_grads()
    with pytest.raises(ValueError, match="exactly one of clip_val"):
        fabric.clip_gradients(model, optimizer, **kwargs)


def test_non_finite_gradient_norm_is_an_error_when_asked() -> None:
    fabric, model, optimizer, net = _with_grads()
    t.cast(torch.Tensor, net[0].weight.grad)[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
    norm = fabric.clip_gradients(model, optimizer, max_norm=1.0, error_if_nonfinite=False)
    assert norm is not None and not torch.isfinite(norm)


def test_clip_gradients_unscales_first() -> None:
    precision = Doubling()
    fabric = Fabric(accelerator="cpu", precision=precision)
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    fabric.backward(model(torch.randn(2, 3, dtype=torch.float64)).sum())
    precision.events.clear()
    fabric.clip_gradients(model, optimizer, max_norm=1.0)
    assert precision.events == ["unscale"]


# -- no_backward_sync ------------------------------------------------------------------------------


def test_no_backward_sync_is_a_no_op_on_one_device() -> None:
    fabric, model, _, net = _with_grads()
    before = [t.cast(torch.Tensor, p.grad).clone() for p in net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fabric.no_backward_sync(model, enabled=True):
            fabric.backward(model(torch.randn(4, 3)).sum())
    assert all(
        not torch.equal(b, t.cast(torch.Tensor, p.grad)) for b, p in zip(before, net.parameters())
    )


def test_no_backward_sync_needs_the_set_up_module() -> None:
    fabric, _, _, net = _with_grads()
    with pytest.raises(TypeError, match=r"returned by fabric\.setup"), fabric.no_backward_sync(net):
        pass


class SyncStrategy(SingleDeviceStrategy):
    """Keeps a sync flag per module the way DDP does, restoring it on exit."""

    def __init__(self) -> None:
        super().__init__()
        self.sync = True
        self.seen: list[nn.Module] = []

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> t.Iterator[None]:
        self.seen.append(module)
        previous = self.sync
        self.sync = previous and not enabled
        try:
            yield
        finally:
            self.sync = previous


def test_no_backward_sync_restores_the_previous_state_even_on_error() -> None:
    strategy = SyncStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    net = _net()
    model = fabric.setup(net)
    with fabric.no_backward_sync(model):
        assert strategy.sync is False
        with fabric.no_backward_sync(model, enabled=False):
            assert strategy.sync is False
        assert strategy.sync is False
    assert strategy.sync is True
    with pytest.raises(KeyError), fabric.no_backward_sync(model):
        raise KeyError("boom")
    assert strategy.sync is True
    assert strategy.seen[0] is model.forward_module


def test_no_backward_sync_warns_once_where_the_strategy_cannot() -> None:
    class NoSync(SingleDeviceStrategy):
        supports_no_sync = False

    fabric = Fabric(accelerator="cpu", strategy=NoSync())
    model = fabric.setup(_net())
    with fabric.no_backward_sync(model, enabled=False):
        pass  # not asked to skip anything: no warning
    message = "NoSync does not support no_backward_sync"
    with pytest.warns(UserWarning, match=message), fabric.no_backward_sync(model):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fabric.no_backward_sync(model):
            pass


# -- devices and data ----------------------------------------------------------------------------


class Pair(t.NamedTuple):
    x: torch.Tensor
    label: str


@dataclasses.dataclass(frozen=True)
class Sample:
    image: torch.Tensor
    ids: list[torch.Tensor]


class Movable:
    def __init__(self) -> None:
        self.moved_to: torch.device | None = None

    def to(self, device: torch.device) -> Movable:
        self.moved_to = device
        return self


def test_move_to_device_walks_nested_collections() -> None:
    meta = torch.device("meta")
    counts: collections.defaultdict[str, list[t.Any]] = collections.defaultdict(list)
    counts["a"].append(torch.ones(1))
    movable = Movable()
    batch = {
        "pair": Pair(torch.ones(2), "keep"),
        "list": [torch.ones(1), (torch.zeros(1), 3)],
        "sample": Sample(torch.ones(3), [torch.ones(1)]),
        "counts": counts,
        "movable": movable,
        "text": "plain",
    }
    out = move_to_device(batch, meta)
    assert out["pair"].x.is_meta and out["pair"].label == "keep" and isinstance(out["pair"], Pair)
    assert out["list"][0].is_meta and out["list"][1][0].is_meta and out["list"][1][1] == 3
    assert out["sample"].image.is_meta and out["sample"].ids[0].is_meta
    assert batch["sample"].image.device.type == "cpu"  # the input is left alone
    assert out["counts"]["a"][0].is_meta and out["counts"]["new"] == []  # factory kept
    assert movable.moved_to == meta
    assert out["text"] == "plain"


def test_to_device_moves_modules_in_place_and_tensors_by_copy() -> None:
    fabric = Fabric(accelerator="cpu")
    net = _net()
    assert fabric.to_device(net) is net
    data = {"x": [torch.ones(1)]}
    assert torch.equal(fabric.to_device(data)["x"][0], torch.ones(1))


def test_print_only_on_rank_zero(capsys: pytest.CaptureFixture[str]) -> None:
    Fabric(accelerator="cpu").print("from zero", 1)
    Fabric(accelerator="cpu", strategy=RankStrategy(rank=1)).print("from one")
    assert capsys.readouterr().out == "from zero 1\n"


# -- seeding ---------------------------------------------------------------------------------------


def test_seed_everything_leaves_each_generator_as_seeding_it_directly_would() -> None:
    assert Fabric.seed_everything(1234) == 1234
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert os.environ["LOOPKIT_GLOBAL_SEED"] == "1234"


def test_seed_everything_without_a_seed_reuses_the_recorded_one() -> None:
    first = Fabric(accelerator="cpu").seed_everything()
    assert 0 <= first < 2**32
    assert Fabric.seed_everything() == first


@pytest.mark.parametrize("seed", [-1, 2**32, "7", True, 1.5])
def test_seed_everything_rejects_bad_seeds(seed: t.Any) -> None:
    with pytest.raises(ValueError, match="seed="):
        Fabric.seed_everything(seed)


class WorkerDraws(Dataset[tuple[int, float, float, int]]):
    """Each item: the worker that made it and what python, numpy and torch drew there."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, float, float, int]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        return worker, random.random(), float(np.random.rand()), int(torch.randint(10**9, ()))


def _draws(fabric: Fabric | None, *, worker_init_fn: t.Any = None) -> list[tuple[int, ...]]:
    Fabric.seed_everything(99)
    loader: t.Any = DataLoader(
        WorkerDraws(), batch_size=None, num_workers=2, worker_init_fn=worker_init_fn
    )
    if fabric is not None:
        loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    return [tuple(item) for item in loader]


def test_worker_seeds_on_rank_zero_are_plain_pytorchs() -> None:
    rank0 = _draws(Fabric(accelerator="cpu"))
    assert rank0 == _draws(None)
    assert rank0[0][1:] != rank0[1][1:]  # the two workers draw differently


def test_worker_seeds_differ_across_ranks_and_repeat_across_runs() -> None:
    rank0 = _draws(Fabric(accelerator="cpu"))
    rank1 = _draws(Fabric(accelerator="cpu", strategy=RankStrategy(rank=1)))
    again = _draws(Fabric(accelerator="cpu", strategy=RankStrategy(rank=1)))
    assert rank1 == again
    assert {row[1:] for row in rank1}.isdisjoint({row[1:] for row in rank0})
    assert rank1[0][1:] != rank1[1][1:]


def test_worker_seeding_keeps_the_users_worker_init_fn_and_can_be_off() -> None:
    ran: list[int] = []
    fabric = Fabric(accelerator="cpu", strategy=RankStrategy(rank=1))
    Fabric.seed_everything(5)
    loader = DataLoader(WorkerDraws(), batch_size=None, num_workers=1, worker_init_fn=ran.append)
    wrapped = fabric.setup_dataloaders(loader)
    assert loader.worker_init_fn is not ran.append
    assert t.cast(t.Any, loader.worker_init_fn).user_fn == ran.append
    assert len(list(wrapped)) == 4
    Fabric.seed_everything(5, workers=False)
    plain = DataLoader(WorkerDraws(), batch_size=None, num_workers=1, worker_init_fn=ran.append)
    fabric.setup_dataloaders(plain)
    assert plain.worker_init_fn == ran.append


# -- collectives and process control --------------------------------------------------------------


def test_collectives_on_one_process() -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.barrier()
    fabric.barrier("named")
    assert fabric.broadcast({"a": 1}) == {"a": 1}
    gathered = fabric.all_gather({"x": torch.ones(2), "n": 3})
    assert gathered["x"].shape == (1, 2) and torch.equal(gathered["n"], torch.tensor([3]))
    reduced = fabric.all_reduce([torch.tensor(2.0), 4], reduce_op="sum")
    assert torch.equal(reduced[0], torch.tensor(2.0)) and torch.equal(reduced[1], torch.tensor(4))
    with pytest.raises(ValueError, match="reduce_op='avg'"):
        fabric.all_reduce(torch.ones(1), reduce_op="avg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rank", "expected"), [(0, ["block", "barrier"]), (1, ["barrier", "block"])]
)
def test_rank_zero_first(rank: int, expected: list[str]) -> None:
    strategy = RankStrategy(rank=rank)
    fabric = Fabric(accelerator="cpu", strategy=strategy)
    strategy.calls.clear()
    with fabric.rank_zero_first():
        strategy.calls.append("block")
    assert [c.split(":")[0] for c in strategy.calls] == expected


def test_launch_calls_the_function_with_fabric_first() -> None:
    strategy = RankStrategy()
    fabric = Fabric(accelerator="cpu", strategy=strategy)

    def train(f: Fabric, a: int, b: int = 0) -> int:
        assert f is fabric
        return a + b

    assert fabric.launch(train, 2, b=3) == 5
    assert strategy.calls == ["setup_environment"]
    fabric.setup(_net())
    assert strategy.calls == ["setup_environment", "module_to_device"]  # not set up twice
    assert Fabric(accelerator="cpu").launch() is None
    with pytest.raises(TypeError, match="function to run"):
        Fabric(accelerator="cpu").launch(3)  # type: ignore[arg-type]


class DoubleInit(Precision):
    def module_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return _default_dtype(torch.float64)

    def tensor_init_context(self) -> contextlib.AbstractContextManager[t.Any]:
        return _default_dtype(torch.float64)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> t.Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def test_init_module_and_init_tensor_use_the_precisions_contexts() -> None:
    fabric = Fabric(accelerator="cpu", precision=DoubleInit())
    with fabric.init_module():
        layer = nn.Linear(2, 2)
    with fabric.init_tensor():
        tensor = torch.zeros(2)
    assert layer.weight.dtype == torch.float64 and tensor.dtype == torch.float64
    assert torch.zeros(1).dtype == torch.float32  # restored afterwards
    assert layer.weight.device == fabric.device


# -- logging ---------------------------------------------------------------------------------------


class ListLogger:
    def __init__(self) -> None:
        self.records: list[tuple[dict[str, t.Any], int | None]] = []

    def log_metrics(self, metrics: dict[str, t.Any], step: int | None = None) -> None:
        self.records.append((metrics, step))


def test_log_sends_python_numbers_to_every_logger() -> None:
    first, second = ListLogger(), ListLogger()
    fabric = Fabric(accelerator="cpu", loggers=[first, second])
    assert fabric.logger is first and fabric.loggers == [first, second]
    fabric.log("loss", torch.tensor(0.5), step=3)
    fabric.log_dict({"acc": torch.tensor([0.25]), "epoch": 1})
    assert first.records == [({"loss": 0.5}, 3), ({"acc": 0.25, "epoch": 1}, None)]
    assert second.records == first.records
    assert type(first.records[0][0]["loss"]) is float


def test_a_single_logger_object_is_accepted() -> None:
    logger = ListLogger()
    fabric = Fabric(accelerator="cpu", loggers=logger)
    fabric.log("x", 1)
    assert logger.records == [({"x": 1}, None)]


def test_log_without_loggers_does_nothing() -> None:
    fabric = Fabric(accelerator="cpu")
    fabric.log("vector", torch.ones(3))  # would be an error if anything were done with it
    fabric.log_dict({"vector": torch.ones(3)})


def test_logging_a_non_scalar_tensor_names_it() -> None:
    fabric = Fabric(accelerator="cpu", loggers=ListLogger())
    with pytest.raises(ValueError, match=r"'weights' is a tensor of shape \(3,\)"):
        fabric.log_dict({"loss": 1.0, "weights": torch.ones(3)})
