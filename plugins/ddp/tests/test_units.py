"""In-process checks: environment detection, resolution by name, errors, one-rank collectives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import SCRIPTS, check_ok, run_command
from torch import nn

from loopkit import Fabric, Precision, registry
from loopkit.cli import main as cli_main
from loopkit_ddp import (
    DDPSpawnStrategy,
    DDPStrategy,
    FSDPStrategy,
    LocalEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
    detect_environment,
    mixed_precision_policy,
)
from loopkit_ddp.environments import find_free_port, first_hostname

TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29400",
            "TORCHELASTIC_RUN_ID": "abc"}  # fmt: skip
SLURM = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
         "SLURM_JOB_ID": "123456", "SLURM_JOB_NAME": "train",
         "SLURM_NODELIST": "gpu[003-005,9],cpu1"}  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in (
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK",
            "GROUP_RANK", "LOOPKIT_PG_TIMEOUT",
        ):  # fmt: skip
            monkeypatch.delenv(key)


# -- cluster environments ---------------------------------------------------------------------


def test_torchrun_variables_win_over_slurm() -> None:
    env = detect_environment(env={**SLURM, **TORCHRUN})
    assert isinstance(env, TorchElasticEnvironment)
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 1, 1, 4)
    assert (env.main_address, env.main_port) == ("10.0.0.7", 29400)


def test_slurm_task_takes_rank_world_size_and_main_node_from_slurm() -> None:
    env = detect_environment(env=SLURM)
    assert isinstance(env, SLURMEnvironment)
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (5, 1, 2, 8)
    assert env.main_address == "gpu003"
    # the same port on every node of a job, derived from the job id; MASTER_PORT overrides it
    assert env.main_port == detect_environment(env={**SLURM, "SLURM_PROCID": "0"}).main_port
    assert env.main_port != detect_environment(env={**SLURM, "SLURM_JOB_ID": "77"}).main_port
    overridden = detect_environment(env={**SLURM, "MASTER_PORT": "1234", "MASTER_ADDR": "head"})
    assert (overridden.main_address, overridden.main_port) == ("head", 1234)


def test_an_interactive_slurm_shell_is_local() -> None:
    env = detect_environment(devices_per_node=2, env={**SLURM, "SLURM_JOB_NAME": "bash"})
    assert isinstance(env, LocalEnvironment)
    assert (env.global_rank(), env.world_size()) == (0, 2)


def test_nothing_set_is_local_rank_zero_of_devices_times_nodes() -> None:
    env = detect_environment(devices_per_node=3, num_nodes=2, env={"NODE_RANK": "1",
                             "MASTER_ADDR": "h", "MASTER_PORT": "5"})  # fmt: skip
    assert isinstance(env, LocalEnvironment)
    assert (env.global_rank(), env.local_rank(), env.node_rank(), env.world_size()) == (3, 0, 1, 6)


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node7", "node7"), ("gpu[003-005,9],cpu1", "gpu003"), ("a[1,2]", "a1"), ("x,y", "x")],
)
def test_first_hostname_of_a_slurm_node_list(nodelist: str, host: str) -> None:
    assert first_hostname(nodelist) == host


def test_local_environment_errors_name_what_to_set() -> None:
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT"):
        _ = LocalEnvironment({}, devices_per_node=2, num_nodes=2).main_port
    with pytest.raises(ValueError, match=r"NODE_RANK=4 is outside \[0, num_nodes=2\)"):
        LocalEnvironment({"NODE_RANK": "4"}, num_nodes=2).node_rank()
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        TorchElasticEnvironment({**TORCHRUN, "RANK": "x"}).global_rank()


def test_find_free_port_can_be_bound() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", find_free_port()))


# -- resolution and bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("ddp", DDPStrategy), ("ddp_spawn", DDPSpawnStrategy), ("fsdp", FSDPStrategy)]
)
def test_strategies_resolve_by_name(name: str, cls: type, clean_env: None) -> None:
    fabric = Fabric(accelerator="cpu", strategy=name, devices=2)
    assert type(fabric.strategy) is cls
    assert (fabric.world_size, fabric.global_rank, fabric.local_rank) == (2, 0, 0)


def test_devices_above_one_pick_ddp(clean_env: None) -> None:
    assert isinstance(Fabric(accelerator="cpu", devices=2).strategy, DDPStrategy)


def test_self_launch_refuses_to_rerun_pytest(clean_env: None) -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    with pytest.raises(RuntimeError, match="the script is pytest"):
        fabric.setup(nn.Linear(2, 2))


def test_ddp_spawn_without_launch_says_to_call_launch(clean_env: None) -> None:
    fabric = Fabric(accelerator="cpu", strategy="ddp_spawn", devices=2)
    with pytest.raises(RuntimeError, match=r"call fabric.launch\(train\)"):
        fabric.setup(nn.Linear(2, 2))


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="timeout=-1"):
        DDPStrategy(timeout=-1)
    with pytest.raises(TypeError, match="process_group_backend=3"):
        DDPStrategy(process_group_backend=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_method='thread'"):
        DDPSpawnStrategy(start_method="thread")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="auto_wrap_policy"):
        FSDPStrategy(auto_wrap_policy={int})
    with pytest.raises(ValueError, match="reduce_op='avg' is not supported; use one of sum"):
        DDPStrategy().all_reduce(torch.ones(1), "avg")


def test_timeout_comes_from_the_argument_or_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DDPStrategy(timeout=12).timeout.total_seconds() == 12
    assert DDPStrategy().timeout.total_seconds() == 1800
    monkeypatch.setenv("LOOPKIT_PG_TIMEOUT", "45")
    assert DDPStrategy().timeout.total_seconds() == 45


class _Bf16Mixed(Precision):
    autocast_dtype = torch.bfloat16


class _F64True(Precision):
    param_dtype = torch.float64


def test_fsdp_mixed_precision_policy_comes_from_the_precision_attributes() -> None:
    mixed = mixed_precision_policy(_Bf16Mixed())
    assert (mixed.param_dtype, mixed.reduce_dtype) == (torch.bfloat16, torch.float32)
    true = mixed_precision_policy(_F64True())
    assert (true.param_dtype, true.reduce_dtype) == (torch.float64, torch.float64)
    assert mixed_precision_policy(Precision()) is None


# -- one rank in this process -----------------------------------------------------------------


def test_one_rank_ddp_in_process_collectives_no_sync_and_checkpoint(
    clean_env: None, tmp_path: Path
) -> None:
    fabric = Fabric(accelerator="cpu", strategy=DDPStrategy(timeout=30), devices=1)
    fabric.launch()
    try:
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert "MASTER_PORT" not in os.environ  # the store's address is passed, not exported
        model = fabric.setup(nn.Linear(3, 2))
        ddp = model.forward_module
        assert isinstance(ddp, nn.parallel.DistributedDataParallel)
        with fabric.no_backward_sync(model):
            assert not ddp.require_backward_grad_sync
        assert ddp.require_backward_grad_sync
        x = torch.tensor([1.0, 2.0])
        assert torch.equal(fabric.all_gather(x), x.unsqueeze(0))
        assert torch.equal(fabric.all_reduce(x, reduce_op="sum"), x)
        assert fabric.broadcast({"a": 1}) == {"a": 1}
        fabric.barrier()
        fabric.save(tmp_path / "ck.pt", {"model": model, "step": 3})
        state = {"model": nn.Linear(3, 2), "step": 0}
        fabric.load(tmp_path / "ck.pt", state)
        assert state["step"] == 3
        assert torch.equal(state["model"].weight, model.module.weight)
    finally:
        fabric.strategy.teardown()
    assert not dist.is_initialized()


# -- loopkit run: bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-nodes", "2", "--node-rank", "2", "x.py"], "--node-rank 2 is outside 0..1"),
        (["--num-nodes", "2", "x.py"], "needs --main-address"),
        (["--devices", "2", "missing.py"], "no script 'missing.py'"),
        (["--strategy", "warp", str(SCRIPTS / "train_ddp.py")], "no strategy named 'warp'"),
    ],
)
def test_loopkit_run_bad_input(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["run", *args]) == 2
    assert message in capsys.readouterr().err


# -- SLURM, with the variables srun would set -------------------------------------------------


@pytest.mark.distributed
def test_two_slurm_tasks_train_together(tmp_path: Path) -> None:
    script = SCRIPTS / "train_ddp.py"
    base = {"SLURM_NTASKS": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "42",
            "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost",
            "MASTER_PORT": str(find_free_port())}  # fmt: skip
    # Each task is waited for by its pid: `wait -n` answers 127 when both have already ended.
    tasks = " ".join(
        f"env SLURM_PROCID={r} SLURM_LOCALID={r} {sys.executable} {script} --out {tmp_path} "
        f"--strategy ddp --devices 2 & p{r}=$!;"
        for r in range(2)
    )
    wait_all = "wait $p0; s0=$?; wait $p1; s1=$?; exit $((s0 | s1))"
    check_ok(run_command(["bash", "-c", f"{tasks} {wait_all}"], env=base))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["rank"] for r in results] == [0, 1]
    from test_ddp_training import reference  # the same data and model as the DDP tests

    expected = reference()
    for r in results:
        assert r["plain"]["forward_module"] == "DistributedDataParallel"
        for key, value in expected.items():
            torch.testing.assert_close(r["plain"]["weights"][key], value, rtol=0, atol=1e-6)


def test_registry_knows_the_plugin_names() -> None:
    for name in ("ddp", "ddp_spawn", "fsdp"):
        assert name in registry()
