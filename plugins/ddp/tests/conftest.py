"""Helpers for tests that start several processes: run a command, bound it, leave nothing behind.

Every command runs in a session of its own; when it ends (or times out) the whole session is
checked for leftovers, which are killed and make the test fail.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
#: A guard against hangs, not a speed target: a run takes 10-30 s, but starting Python and torch
#: in 3 processes can take much longer on a loaded machine or without compiled bytecode.
TIMEOUT = 240
PYTHON = sys.executable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "distributed: starts several processes (torch.distributed / torchrun / spawn)"
    )


def load_script(name: str) -> object:
    """Import ``scripts/<name>.py`` as a module (its data and model builders)."""
    spec = importlib.util.spec_from_file_location(f"_ddp_script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    #: ``time.time()`` when the command's last process was gone.
    ended_at: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_command(
    args: list[str],
    *,
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Finished:
    """Run ``args`` in a new session; fail the test on timeout or on processes left behind."""
    full_env = {**os.environ, **(env or {})}
    # The tests' own settings must not leak in from a surrounding launcher.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID"):  # fmt: skip
        if env is None or key not in env:
            full_env.pop(key, None)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{args} did not finish within {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    seconds = time.monotonic() - start
    # Whatever the command started must be gone shortly after it ended.
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{args} left processes behind\nstderr:\n{err}")
    return Finished(proc.returncode, out, err, seconds, time.time())


def python_script(name: str, *args: str, **kw: object) -> Finished:
    return run_command([PYTHON, str(SCRIPTS / f"{name}.py"), *args], **kw)  # type: ignore[arg-type]


def torchrun(name: str, *args: str, nproc: int = 2, **kw: object) -> Finished:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(SCRIPTS / f"{name}.py"), *args]  # fmt: skip
    return run_command(cmd, **kw)  # type: ignore[arg-type]


def loopkit_run(*args: str, **kw: object) -> Finished:
    return run_command([PYTHON, "-m", "loopkit.cli", "run", *args], **kw)  # type: ignore[arg-type]


def check_ok(result: Finished) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
