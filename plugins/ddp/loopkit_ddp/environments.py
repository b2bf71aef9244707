"""Cluster environments: where rank, world size and the main address come from.

A cluster environment only reads the process's environment variables; it never starts or talks
to a process. They are detected in a fixed order (:func:`detect_environment`):

1. :class:`TorchElasticEnvironment`: torchrun (``torch.distributed.run``), ``loopkit run``, or
   any launcher that sets torchrun's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
   ``MASTER_ADDR``, ``MASTER_PORT``). The processes of the run exist already.
2. :class:`SLURMEnvironment`: a task started by ``srun`` (``SLURM_NTASKS``, ``SLURM_PROCID``...),
   unless the job is an interactive shell.
3. :class:`LocalEnvironment`: nothing set; the strategy starts the other local ranks itself.
"""

from __future__ import annotations

import os
import re
import socket
import typing as t

__all__ = [
    "ClusterEnvironment",
    "LocalEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "detect_environment",
    "find_free_port",
]

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ClusterEnvironment:
    """What one process learns about its place in the run from its environment."""

    #: A short name used in messages (``torchelastic``, ``slurm``, ``local``).
    name: t.ClassVar[str] = "?"
    #: True when something outside loopkit started every process of the run.
    creates_processes_externally: t.ClassVar[bool] = True

    def __init__(self, env: t.Mapping[str, str] | None = None) -> None:
        self._env = env

    @property
    def env(self) -> t.Mapping[str, str]:
        """The variables read (``os.environ`` unless a mapping was given)."""
        return os.environ if self._env is None else self._env

    @classmethod
    def detect(cls, env: t.Mapping[str, str] | None = None) -> bool:
        """Whether this environment is the one the process runs in."""
        raise NotImplementedError

    @property
    def main_address(self) -> str:
        raise NotImplementedError

    @property
    def main_port(self) -> int:
        raise NotImplementedError

    def world_size(self) -> int:
        raise NotImplementedError

    def global_rank(self) -> int:
        raise NotImplementedError

    def local_rank(self) -> int:
        raise NotImplementedError

    def node_rank(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        try:
            where = f"rank {self.global_rank()}/{self.world_size()}"
        except (KeyError, ValueError, NotImplementedError):
            where = "unresolved"
        return f"{type(self).__name__}({where})"

    def _int(self, *names: str, default: int | None = None) -> int:
        for name in names:
            value = self.env.get(name)
            if value is not None and value != "":
                try:
                    return int(value)
                except ValueError:
                    raise ValueError(
                        f"environment variable {name}={value!r} is not an integer "
                        f"({self.name} environment)"
                    ) from None
        if default is not None:
            return default
        raise KeyError(f"{self.name} environment: none of {', '.join(names)} is set")


class TorchElasticEnvironment(ClusterEnvironment):
    """Started by torchrun / ``loopkit run`` (or anything setting torchrun's variables)."""

    name = "torchelastic"

    @classmethod
    def detect(cls, env: t.Mapping[str, str] | None = None) -> bool:
        env = os.environ if env is None else env
        return "TORCHELASTIC_RUN_ID" in env or all(v in env for v in _TORCHRUN_VARS)

    @property
    def main_address(self) -> str:
        return self.env.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        return self._int("MASTER_PORT")

    def world_size(self) -> int:
        return self._int("WORLD_SIZE")

    def global_rank(self) -> int:
        return self._int("RANK")

    def local_rank(self) -> int:
        return self._int("LOCAL_RANK")

    def node_rank(self) -> int:
        return self._int("GROUP_RANK", "NODE_RANK", default=0)


class SLURMEnvironment(ClusterEnvironment):
    """A task started by ``srun``: one task per device, ``--ntasks-per-node`` = ``devices``.

    The main address is ``MASTER_ADDR`` when set, otherwise the first host of the job's node
    list; the port is ``MASTER_PORT`` when set, otherwise derived from the job id (the same on
    every node, different for concurrent jobs).
    """

    name = "slurm"

    @classmethod
    def detect(cls, env: t.Mapping[str, str] | None = None) -> bool:
        env = os.environ if env is None else env
        if "SLURM_NTASKS" not in env or "SLURM_PROCID" not in env:
            return False
        # `salloc` then `python train.py` is a shell inside the job, not a task of srun.
        return env.get("SLURM_JOB_NAME") not in ("bash", "interactive")

    @property
    def main_address(self) -> str:
        if self.env.get("MASTER_ADDR"):
            return self.env["MASTER_ADDR"]
        nodelist = self.env.get("SLURM_NODELIST") or self.env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            return "127.0.0.1"
        return first_hostname(nodelist)

    @property
    def main_port(self) -> int:
        if self.env.get("MASTER_PORT"):
            return self._int("MASTER_PORT")
        job_id = self.env.get("SLURM_JOB_ID", "")
        digits = re.sub(r"\D", "", job_id)
        return 15000 + (int(digits) % 20000 if digits else 0)

    def world_size(self) -> int:
        return self._int("SLURM_NTASKS")

    def global_rank(self) -> int:
        return self._int("SLURM_PROCID")

    def local_rank(self) -> int:
        return self._int("SLURM_LOCALID")

    def node_rank(self) -> int:
        return self._int("SLURM_NODEID", default=0)


def first_hostname(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[003-005,9],cpu1"`` -> ``"gpu003"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist.strip())
    if match is None:
        return nodelist.strip()
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


class LocalEnvironment(ClusterEnvironment):
    """No launcher: this process is local rank 0 and the strategy starts the other local ranks.

    For several nodes each node runs the same command with ``NODE_RANK`` set, and every node
    needs the same ``MASTER_ADDR`` and ``MASTER_PORT``.
    """

    name = "local"
    creates_processes_externally = False

    def __init__(
        self,
        env: t.Mapping[str, str] | None = None,
        *,
        devices_per_node: int = 1,
        num_nodes: int = 1,
    ) -> None:
        super().__init__(env)
        self.devices_per_node = devices_per_node
        self.num_nodes = num_nodes
        self._port: int | None = None

    @classmethod
    def detect(cls, env: t.Mapping[str, str] | None = None) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self.env.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self.env.get("MASTER_PORT"):
            return self._int("MASTER_PORT")
        if self.num_nodes > 1:
            raise ValueError(
                f"num_nodes={self.num_nodes} without a launcher needs MASTER_ADDR and MASTER_PORT "
                "set to the same values on every node (and NODE_RANK on each); or start the run "
                "with `loopkit run --num-nodes ...`, torchrun, or srun"
            )
        if self._port is None:
            self._port = find_free_port()
        return self._port

    def world_size(self) -> int:
        return self.devices_per_node * self.num_nodes

    def global_rank(self) -> int:
        return self.node_rank() * self.devices_per_node

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        rank = self._int("NODE_RANK", "GROUP_RANK", default=0)
        if not 0 <= rank < self.num_nodes:
            raise ValueError(f"NODE_RANK={rank} is outside [0, num_nodes={self.num_nodes})")
        return rank


_ORDER: tuple[type[ClusterEnvironment], ...] = (TorchElasticEnvironment, SLURMEnvironment)


def detect_environment(
    devices_per_node: int = 1,
    num_nodes: int = 1,
    env: t.Mapping[str, str] | None = None,
) -> ClusterEnvironment:
    """The environment this process runs in: torchelastic, then SLURM, then local."""
    for cls in _ORDER:
        if cls.detect(env):
            return cls(env)
    return LocalEnvironment(env, devices_per_node=devices_per_node, num_nodes=num_nodes)
