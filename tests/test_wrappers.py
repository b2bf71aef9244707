"""What fabric.setup hands back: the user's own module, optimizer and dataloader, wrapped."""

from __future__ import annotations

import copy
import typing as t

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from loopkit import Fabric
from loopkit.wrappers import FabricDataLoader, FabricModule, FabricOptimizer, unwrap


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.note = "plain"

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.calls += 1
        return self.head(torch.relu(self.body(x))) * scale

    def describe(self) -> str:
        return f"net:{self.note}"


def _setup(**opt_kwargs: t.Any) -> tuple[Fabric, Net, torch.optim.Optimizer, t.Any, t.Any]:
    torch.manual_seed(0)
    fabric = Fabric(accelerator="cpu")
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, **opt_kwargs)
    model, optimizer = fabric.setup(net, opt)
    return fabric, net, opt, model, optimizer


# -- module ------------------------------------------------------------------------------------


def test_module_wrapper_holds_the_users_module_not_a_copy() -> None:
    _, net, _, model, _ = _setup()
    assert isinstance(model, FabricModule)
    assert model.module is net
    assert unwrap(model) is net
    assert [p for p in model.parameters()] == [p for p in net.parameters()]
    assert model.body is net.body
    assert model.describe() == "net:plain"  # methods of the original work through it


def test_module_wrapper_state_dict_keys_and_names_equal_the_originals() -> None:
    _, net, _, model, _ = _setup()
    assert list(model.state_dict()) == list(net.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == ["calls"]
    other = Net()
    model.load_state_dict(other.state_dict())
    assert torch.equal(net.body.weight, other.body.weight)


def test_module_wrapper_forward_passes_arguments_and_returns_the_output() -> None:
    _, net, _, model, _ = _setup()
    x = torch.randn(2, 3)
    assert torch.equal(model(x, scale=2.0), net(x, scale=2.0))
    assert int(net.calls) == 2


def test_attributes_set_on_the_wrapper_reach_the_original() -> None:
    _, net, _, model, _ = _setup()
    model.note = "changed"
    assert net.note == "changed"
    model.eval()
    assert not net.training and not model.training
    model.train()
    assert net.training and model.training


def test_wrapper_training_flag_follows_the_original_at_setup() -> None:
    fabric = Fabric(accelerator="cpu")
    net = Net().eval()
    model = fabric.setup(net)
    assert model.training is False


def test_hooks_registered_on_the_wrapper_run() -> None:
    _, _, _, model, _ = _setup()
    seen: list[str] = []
    handle = model.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    model.register_forward_hook(lambda mod, args, out: seen.append("post"))
    model(torch.randn(1, 3))
    assert seen == ["pre", "post"]
    handle.remove()
    model(torch.randn(1, 3))
    assert seen == ["pre", "post", "post"]


def test_hooks_on_the_users_module_run_once_per_call() -> None:
    _, net, _, model, _ = _setup()
    seen: list[str] = []
    net.register_forward_hook(lambda mod, args, out: seen.append(type(mod).__name__))
    model(torch.randn(1, 3))
    assert seen == ["Net"]


def test_phase_wrapper_added_after_setup_wraps_the_forward() -> None:
    fabric, _, _, model, _ = _setup()
    import contextlib

    seen: list[str] = []

    @contextlib.contextmanager
    def around(phase: t.Any) -> t.Iterator[None]:
        seen.append(phase.name)
        yield

    handle = fabric.wrap_phase("forward", around)
    model(torch.randn(1, 3))
    handle.remove()
    model(torch.randn(1, 3))
    assert seen == ["forward"]


def test_setting_up_the_same_module_twice_is_refused() -> None:
    fabric, net, _, model, _ = _setup()
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup(net)
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup(model)


# -- optimizer ---------------------------------------------------------------------------------


def test_optimizer_wrapper_is_an_instance_of_the_original_type() -> None:
    _, _, opt, _, optimizer = _setup()
    assert isinstance(optimizer, torch.optim.SGD)
    assert isinstance(optimizer, FabricOptimizer)
    assert optimizer.optimizer is opt
    assert unwrap(optimizer) is opt


def test_every_attribute_of_the_original_works_through_the_wrapper() -> None:
    _, _, opt, model, optimizer = _setup(momentum=0.9)
    assert optimizer.param_groups is opt.param_groups
    assert optimizer.defaults is opt.defaults
    assert optimizer.state is opt.state
    optimizer.param_groups[0]["lr"] = 0.5
    assert opt.param_groups[0]["lr"] == 0.5
    extra = nn.Parameter(torch.ones(2))
    optimizer.add_param_group({"params": [extra], "lr": 0.01})
    assert opt.param_groups[-1]["params"] == [extra]
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert len(opt.state) == 4  # momentum buffers of the module's parameters, kept by the original
    assert optimizer.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    optimizer.custom_flag = True  # attributes set on the wrapper land on the original
    assert opt.custom_flag is True  # type: ignore[attr-defined]


def test_load_state_dict_on_the_original_is_seen_through_the_wrapper() -> None:
    _, _, opt, model, optimizer = _setup(momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    saved = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(saved)  # rebinds opt.state and opt.param_groups
    assert optimizer.state is opt.state
    assert optimizer.param_groups is opt.param_groups


def test_step_hooks_registered_on_the_original_run_once() -> None:
    _, _, opt, model, optimizer = _setup()
    seen: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert seen == ["pre", "post"]


def test_step_with_closure_returns_the_closures_loss() -> None:
    _, _, _, model, optimizer = _setup()
    x = torch.randn(4, 3)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0


def test_lbfgs_through_the_wrapper_equals_plain_lbfgs() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    plain = nn.Linear(3, 1)
    wrapped_net = copy.deepcopy(plain)

    def run(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for _ in range(3):

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            optimizer.step(closure)

    run(plain, torch.optim.LBFGS(plain.parameters(), max_iter=5))
    fabric = Fabric(accelerator="cpu")
    lbfgs = torch.optim.LBFGS(wrapped_net.parameters(), max_iter=5)
    model, optimizer = fabric.setup(wrapped_net, lbfgs)
    run(model, optimizer)
    assert torch.equal(plain.weight, wrapped_net.weight)
    assert torch.equal(plain.bias, wrapped_net.bias)


def test_lr_scheduler_on_the_wrapper_steps_and_does_not_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    _, _, opt, model, optimizer = _setup()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert "step" not in vars(opt)  # the scheduler's counter was put on the wrapper only


def test_lr_scheduler_made_before_setup_still_steps_through_fabric() -> None:
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    class Counter:
        steps = 0

        def on_optimizer_step(self) -> None:
            self.steps += 1

    counter = Counter()
    fabric = Fabric(accelerator="cpu", callbacks=[counter])
    model, optimizer = fabric.setup(net, opt)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    assert counter.steps == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_zero_grad_set_to_none_false_zeroes_in_place() -> None:
    _, net, _, model, optimizer = _setup()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.zero_grad(set_to_none=False)
    assert net.body.weight.grad is not None and not net.body.weight.grad.any()
    optimizer.zero_grad()
    assert net.body.weight.grad is None


def test_optimizer_wrapper_can_be_deep_copied() -> None:
    _, _, opt, _, optimizer = _setup()
    clone = copy.deepcopy(optimizer)
    assert isinstance(clone, torch.optim.SGD)
    assert clone.param_groups[0]["lr"] == 0.1
    assert clone.param_groups is not opt.param_groups
    assert clone.optimizer is not opt


def test_optimizer_set_up_twice_is_refused() -> None:
    fabric, _, _, _, optimizer = _setup()
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup_optimizers(optimizer)


# -- dataloader --------------------------------------------------------------------------------


class _EpochSampler(torch.utils.data.Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> t.Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def test_dataloader_sets_the_sampler_epoch_on_each_iteration() -> None:
    fabric = Fabric(accelerator="cpu")
    sampler = _EpochSampler(6)
    loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=2, sampler=sampler)
    wrapped = fabric.setup_dataloaders(loader)
    assert isinstance(wrapped, FabricDataLoader)
    assert len(wrapped) == 3
    for _ in range(3):
        assert [b[0].tolist() for b in wrapped] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert sampler.epochs == [0, 1, 2]
    assert wrapped.batch_size == 2  # attributes of the original
    assert wrapped.dataloader is loader


def test_distributed_sampler_reshuffles_each_epoch() -> None:
    fabric = Fabric(accelerator="cpu")
    sampler = DistributedSampler(TensorDataset(torch.arange(32.0)), num_replicas=1, rank=0, seed=3)
    loader = DataLoader(TensorDataset(torch.arange(32.0)), batch_size=32, sampler=sampler)
    wrapped = fabric.setup_dataloaders(loader)
    first = next(iter(wrapped))[0].tolist()
    second = next(iter(wrapped))[0].tolist()
    assert first != second
    sampler.set_epoch(0)
    assert first == [float(i) for i in sampler]


def test_dataloader_moves_batches_with_the_strategy() -> None:
    from loopkit.strategy import SingleDeviceStrategy

    moved: list[object] = []

    class Recording(SingleDeviceStrategy):
        def batch_to_device(self, batch: t.Any, device: torch.device | None = None) -> t.Any:
            moved.append(batch)
            return super().batch_to_device(batch, device)

    fabric = Fabric(accelerator="cpu", strategy=Recording())
    loader = DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2)
    # On the CPU batches are already where they belong: nothing is walked per batch.
    list(fabric.setup_dataloaders(loader))
    assert moved == []
    fabric._strategy.parallel_devices = [torch.device("meta")]  # pretend another device
    batches = list(fabric.setup_dataloaders(loader))
    assert len(moved) == 2
    assert all(b[0].device.type == "meta" for b in batches)
    batches = list(fabric.setup_dataloaders(loader, move_to_device=False))
    assert all(b[0].device.type == "cpu" for b in batches)


def test_dataloader_wrapper_can_be_copied() -> None:
    fabric = Fabric(accelerator="cpu")
    wrapped = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(4.0)), batch_size=2))
    clone = copy.copy(wrapped)
    assert clone.dataloader is wrapped.dataloader


def test_dataloader_set_up_twice_is_refused() -> None:
    fabric = Fabric(accelerator="cpu")
    wrapped = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(4.0))))
    with pytest.raises(ValueError, match="already set up"):
        fabric.setup_dataloaders(wrapped)
    with pytest.raises(TypeError, match="got int"):
        fabric.setup_dataloaders(3)
    with pytest.raises(ValueError, match="at least one"):
        fabric.setup_dataloaders()
