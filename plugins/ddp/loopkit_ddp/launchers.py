"""Starting the processes of a run when no launcher did, and ending them all when one fails.

Two ways, both used only when no torchrun/SLURM environment exists:

* :class:`ScriptLauncher` (``ddp``, ``fsdp``): this process is local rank 0; local ranks
  1..N-1 are the same command line (``sys.argv``) re-run with the variables torchrun would set.
  This process watches them: when one fails, the others are ended and the first failure (by
  time, with its rank) is reported last, and the exit status is non-zero.
* :func:`spawn` (``ddp_spawn``): ``torch.multiprocessing`` runs a function in N new processes
  and returns rank zero's result.

:func:`install_worker_hooks` runs in every process a launcher started (ours or torchrun): it
records an uncaught exception where the launcher reads it, and ends the process when its
launcher is gone. Nothing here runs at import.
"""

from __future__ import annotations

import atexit
import collections.abc as c
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import typing as t
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ScriptLauncher", "install_worker_hooks", "script_command", "spawn"]

#: Set in every process :class:`ScriptLauncher` starts: the launcher's pid and the error file.
PARENT_PID_VAR = "LOOPKIT_DDP_PARENT_PID"
ERROR_FILE_VAR = "LOOPKIT_DDP_ERROR_FILE"
#: How long a failed rank's launcher waits for this process to fail by itself before ending it.
GRACE_SECONDS = 5.0


def _prefix() -> str:
    return "loopkit ddp:"


# -- worker side ----------------------------------------------------------------------------------


def _is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text
        for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "[gloo")
    )


def _error_record(exc: BaseException, rank: int) -> dict[str, t.Any]:
    return {
        "rank": rank,
        "time": time.time(),
        "type": type(exc).__name__,
        "message": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _write_json(path: str, data: dict[str, t.Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


_installed = False


def install_worker_hooks(rank: int) -> None:
    """Record this process's uncaught exception for its launcher; die with the launcher.

    Under torchrun the record goes to ``TORCHELASTIC_ERROR_FILE`` (torchrun's format, so its
    summary shows the message); under :class:`ScriptLauncher` to the launcher's error file. A
    rank whose collective failed because a peer vanished waits a little (up to
    :data:`GRACE_SECONDS`) before exiting, so the launcher sees the peer's failure first and
    names it as the cause. Idempotent.
    """
    global _installed
    loopkit_file = os.environ.get(ERROR_FILE_VAR)
    elastic_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    parent = os.environ.get(PARENT_PID_VAR)
    if _installed or not (loopkit_file or elastic_file or parent):
        return
    _installed = True
    previous = sys.excepthook

    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: t.Any
    ) -> None:
        record = _error_record(exc, rank)
        with contextlib.suppress(OSError):
            if loopkit_file:
                _write_json(loopkit_file, record)
            if elastic_file:
                _write_json(
                    elastic_file,
                    {
                        "message": {
                            "message": record["message"],
                            "extraInfo": {
                                "py_callstack": record["traceback"],
                                "timestamp": str(int(record["time"])),
                            },
                        }
                    },
                )
        previous(exc_type, exc, tb)
        if elastic_file and _is_peer_failure(exc):
            sys.stderr.flush()
            time.sleep(GRACE_SECONDS)  # torchrun ends this process meanwhile

    sys.excepthook = excepthook
    if parent is not None and parent.isdigit():
        _watch_parent(int(parent))


def _watch_parent(parent_pid: int) -> None:
    # A rank started by ScriptLauncher must not outlive it (the launcher may be killed hard).
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="loopkit-ddp-parent-watch", daemon=True).start()


# -- the script launcher --------------------------------------------------------------------------


def _looks_like_pytest(argv0: str) -> bool:
    name = os.path.basename(argv0)
    return name in ("pytest", "py.test", "pytest.exe") or argv0.endswith(
        os.path.join("pytest", "__main__.py")
    )


def script_command() -> list[str]:
    """The command line that re-runs this process's script: ``python [flags] script args``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if spec is not None and getattr(spec, "name", None) and not _looks_like_pytest(sys.argv[0]):
        module = spec.name.removesuffix(".__main__")
        return [sys.executable, *flags, "-m", module, *sys.argv[1:]]
    script = getattr(main, "__file__", None)
    if script is None or not sys.argv or not sys.argv[0] or sys.argv[0] == "-c":
        raise RuntimeError(
            "this strategy starts its other local ranks by re-running the script, but this Python "
            "session has no script (interactive, a notebook, or python -c). Run a script, start "
            "it with `loopkit run --devices N script.py` or torchrun, or use strategy='ddp_spawn' "
            "with fabric.launch(fn)"
        )
    if _looks_like_pytest(sys.argv[0]):
        raise RuntimeError(
            "this strategy starts its other local ranks by re-running the script, and the script "
            "is pytest: that would re-run the test session. In tests, start a script with "
            "subprocess (torchrun or `loopkit run`), or use strategy='ddp_spawn'"
        )
    return [sys.executable, *flags, os.path.abspath(sys.argv[0]), *sys.argv[1:]]


@dataclass
class _Failure:
    rank: int
    time: float
    message: str
    traceback: str
    exitcode: int | None = None


class ScriptLauncher:
    """Re-run this script for local ranks 1..N-1 and watch them; this process is local rank 0.

    ``node_rank``, ``devices_per_node`` and ``world_size`` place the children; ``main_address``
    and ``main_port`` are where rank 0's store listens.
    """

    def __init__(
        self,
        *,
        devices_per_node: int,
        node_rank: int,
        world_size: int,
        main_address: str,
        main_port: int,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self.devices_per_node = devices_per_node
        self.node_rank = node_rank
        self.world_size = world_size
        self.main_address = main_address
        self.main_port = main_port
        self.grace_seconds = grace_seconds
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # global rank -> process
        self._errors: dict[int, str] = {}
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._lock = threading.Lock()
        self._reported = False
        self._stop = threading.Event()
        self._observed: dict[int, float] = {}

    @property
    def started(self) -> bool:
        return bool(self.procs)

    def start(self) -> None:
        """Start the children, then watch them from a background thread."""
        if self.started:
            return
        command = script_command()
        self._dir = tempfile.TemporaryDirectory(prefix="loopkit-ddp-")
        base = os.environ.copy()
        threads = base.get("OMP_NUM_THREADS")
        if threads is None and self.devices_per_node > 1:
            # As torchrun does: N processes each using every core would oversubscribe the CPU.
            import torch

            base["OMP_NUM_THREADS"] = "1"
            torch.set_num_threads(1)
        run_id = f"loopkit-{os.getpid()}"
        first = self.node_rank * self.devices_per_node
        for local_rank in range(1, self.devices_per_node):
            rank = first + local_rank
            error_file = os.path.join(self._dir.name, f"rank{rank}.json")
            self._errors[rank] = error_file
            env = {
                **base,
                "RANK": str(rank),
                "LOCAL_RANK": str(local_rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_WORLD_SIZE": str(self.devices_per_node),
                "GROUP_RANK": str(self.node_rank),
                "NODE_RANK": str(self.node_rank),
                "ROLE_RANK": str(rank),
                "ROLE_WORLD_SIZE": str(self.world_size),
                "GROUP_WORLD_SIZE": str(self.world_size // self.devices_per_node),
                "MASTER_ADDR": self.main_address,
                "MASTER_PORT": str(self.main_port),
                "TORCHELASTIC_RUN_ID": run_id,
                "TORCHELASTIC_RESTART_COUNT": "0",
                "TORCHELASTIC_MAX_RESTARTS": "0",
                "TORCHELASTIC_USE_AGENT_STORE": "False",
                PARENT_PID_VAR: str(os.getpid()),
                ERROR_FILE_VAR: error_file,
            }
            env.pop("TORCHELASTIC_ERROR_FILE", None)
            self.procs[rank] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        self._previous_hook = sys.excepthook
        self.install_excepthook()
        atexit.register(self._at_exit)
        threading.Thread(target=self._watch, name="loopkit-ddp-watch", daemon=True).start()

    def install_excepthook(self) -> None:
        """Make this launcher's report the outermost ``sys.excepthook`` (again).

        ``init_process_group`` wraps the hook to prefix lines with the rank; the launcher's
        report names ranks itself, so it goes back on top, ahead of the original hook.
        """
        sys.excepthook = self._excepthook

    # -- failure paths -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is None or code == 0 or rank in self._observed:
                    continue
                self._observed[rank] = time.time()
                # Give this process a moment to fail by itself (its excepthook then reports);
                # past that, it is stuck or busy: end everything from here.
                deadline = time.time() + self.grace_seconds
                while time.time() < deadline:
                    if self._stop.wait(0.1):
                        return
                if self._report(own=None):
                    os._exit(1)
                return

    def _excepthook(self, exc_type: type[BaseException], exc: BaseException, tb: t.Any) -> None:
        own = _error_record(exc, self.node_rank * self.devices_per_node)
        failure = _Failure(own["rank"], own["time"], own["message"], own["traceback"])
        if not self._report(own=failure):
            self._previous_hook(exc_type, exc, tb)

    def _at_exit(self) -> None:
        # This process finished: wait for the others, which do the same work.
        for rank, proc in self.procs.items():
            code = proc.wait()
            if code != 0:
                self._observed.setdefault(rank, time.time())
        if any(proc.returncode != 0 for proc in self.procs.values()):
            self._report(own=None)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        self._stop.set()
        self._cleanup()

    def _child_failures(self) -> list[_Failure]:
        out = []
        for rank, proc in self.procs.items():
            code = proc.poll()
            path = self._errors.get(rank)
            data: dict[str, t.Any] | None = None
            if path and os.path.exists(path):
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(Path(path).read_text())
            if data is not None:
                out.append(
                    _Failure(rank, float(data["time"]), data["message"], data["traceback"], code)
                )
            elif code is not None and code != 0:
                when = self._observed.get(rank, time.time())
                if code < 0:
                    with contextlib.suppress(ValueError):
                        message = f"killed by signal {signal.Signals(-code).name}"
                else:
                    message = f"exited with code {code}"
                out.append(_Failure(rank, when, message, "", code))
        return out

    def _report(self, own: _Failure | None) -> bool:
        """End the children and print the first failure; False when someone else reports."""
        with self._lock:
            if self._reported:
                return False
            self._reported = True
        self._stop.set()
        failures = self._child_failures()
        if own is not None:
            failures.append(own)
        self._terminate()
        failures.sort(key=lambda f: f.time)
        if not failures:
            return False
        first, rest = failures[0], failures[1:]
        lines = [
            "",
            f"{_prefix()} rank {first.rank} failed first"
            + (f" (exit code {first.exitcode})" if first.exitcode else "")
            + f": {first.message}",
        ]
        if first.traceback:
            lines.append(first.traceback.rstrip())
        for other in rest:
            lines.append(f"{_prefix()} rank {other.rank} stopped after it: {other.message}")
        ended = [r for r in self.procs if r not in {f.rank for f in failures}]
        if ended:
            lines.append(f"{_prefix()} ended rank(s) {', '.join(map(str, ended))}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        return True

    def _terminate(self) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for p in alive:
            with contextlib.suppress(OSError):
                p.terminate()
        deadline = time.time() + self.grace_seconds
        for p in alive:
            try:
                p.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    p.kill()
                p.wait()

    def _cleanup(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None


# -- spawn ----------------------------------------------------------------------------------------


def _spawned(
    local_rank: int,
    fn: c.Callable[..., t.Any],
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    on_start: c.Callable[[int], None],
    on_end: c.Callable[[], None],
    result_path: str,
) -> None:
    on_start(local_rank)
    try:
        result = fn(*args, **kwargs)
        if local_rank == 0 and result_path:
            import torch

            torch.save(result, result_path)
    finally:
        on_end()


def spawn(
    fn: c.Callable[..., t.Any],
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    *,
    nprocs: int,
    first_rank: int,
    on_start: c.Callable[[int], None],
    on_end: c.Callable[[], None],
    start_method: str = "spawn",
) -> t.Any:
    """Run ``fn(*args, **kwargs)`` in ``nprocs`` new processes; return local rank 0's result.

    ``on_start(local_rank)`` runs first in each process (the strategy learns its rank there);
    ``on_end()`` runs last, also after an error. When a process fails, the others are ended and
    a ``RuntimeError`` naming the first failing rank, with its traceback, is raised here.
    """
    import torch
    from torch.multiprocessing.spawn import (
        ProcessExitedException,
        ProcessRaisedException,
        start_processes,
    )

    with tempfile.TemporaryDirectory(prefix="loopkit-spawn-") as tmp:
        result_path = os.path.join(tmp, "result.pt")
        context = start_processes(
            _spawned,
            args=(fn, args, kwargs, on_start, on_end, result_path),
            nprocs=nprocs,
            join=False,
            start_method=start_method,
        )
        try:
            while not context.join():
                pass
        except ProcessRaisedException as err:
            rank = first_rank + err.error_index
            text = str(err).split("terminated with the following error:", 1)[-1].strip()
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["?"]
            raise RuntimeError(
                f"{_prefix()} rank {rank} failed first: {last[0]}\n{text}\n"
                f"(the other ranks were ended)"
            ) from None
        except ProcessExitedException as err:
            rank = first_rank + err.error_index
            how = (
                f"killed by signal {err.signal_name}" if err.signal_name
                else f"exited with code {err.exit_code}"
            )  # fmt: skip
            raise RuntimeError(
                f"{_prefix()} rank {rank} {how} (the other ranks were ended)"
            ) from None
        if not os.path.exists(result_path):
            return None
        return torch.load(result_path, weights_only=False)
