"""The ``loopkit`` command.

Each subcommand is one ``_add_<name>(subparsers)`` function that builds its parser and sets
``func`` to the function that runs it (``func(args) -> exit status``); :func:`main` only
dispatches. Subcommands import what they need when they run, so ``loopkit --help`` stays fast.

- ``loopkit plugins``: list installed plugins (name, kind, distribution, version, whether it
  loads); exits with 1 when any fails to load.
- ``loopkit run``: torch's elastic launcher (``torch.distributed.run``, what ``torchrun`` runs)
  with the script's Fabric/Trainer options passed through ``LOOPKIT_*`` environment variables,
  so a script written for one device runs unchanged on several (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import collections.abc as c
import os
import sys

__all__ = ["build_parser", "main"]


# -- loopkit plugins --------------------------------------------------------------------------


def _add_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plugins",
        help="list installed plugins",
        description=(
            "List the plugins installed in the entry-point group 'loopkit.plugins': name, kind, "
            "distribution, version, and whether the plugin loads (each one is imported to find "
            "out). Exits with status 1 when any plugin fails to load."
        ),
    )
    p.add_argument("--kind", help="only plugins of this kind (strategy, precision, ...)")
    p.set_defaults(func=_plugins)


def _plugins(args: argparse.Namespace) -> int:
    from loopkit.plugins import KINDS, registry

    if args.kind is not None and args.kind not in KINDS:
        print(f"loopkit plugins: unknown kind {args.kind!r}; kinds are {', '.join(KINDS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    order = {kind: i for i, kind in enumerate(KINDS)}
    rows = sorted(registry().status(), key=lambda r: (order.get(r.kind, len(order)), r.info.name))
    if args.kind is not None:
        rows = [r for r in rows if r.kind == args.kind]
    table = [("name", "kind", "distribution", "version", "loads")]
    table += [(r.info.name, r.kind, r.info.distribution, r.info.version, r.loads) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    text = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
        for row in table
    )
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `loopkit plugins | head`: the reader left, which is not an error
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if all(r.loads == "ok" for r in rows) else 1


# -- loopkit run ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _devices(text: str) -> int | str:
    return text if text == "auto" else _positive(text)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="launch a script on several devices/nodes (torch's elastic launcher)",
        description=(
            "Run SCRIPT in one process per device with torch.distributed.run (what torchrun "
            "runs), passing the script's Fabric/Trainer options through LOOPKIT_* environment "
            "variables: arguments the script leaves at their defaults take them, so the script "
            "needs no change. A failing rank ends the others; the first failure, with its rank, "
            "is reported last, and the exit status is 1."
        ),
    )
    p.add_argument("--accelerator", help="cpu, cuda, gpu, mps or auto (LOOPKIT_ACCELERATOR)")
    p.add_argument(
        "--devices", type=_devices, default=1,
        help="processes per node: an int, or auto (every GPU, else 1) (LOOPKIT_DEVICES)",
    )  # fmt: skip
    p.add_argument("--num-nodes", type=_positive, default=1, help="number of nodes")
    p.add_argument("--node-rank", type=int, default=0, help="this node's rank (0..num-nodes-1)")
    p.add_argument("--main-address", help="address of the node with rank 0 (several nodes)")
    p.add_argument("--main-port", type=int, help="a free port on the main node (several nodes)")
    p.add_argument("--strategy", help="ddp, fsdp, ... (LOOPKIT_STRATEGY; default ddp)")
    p.add_argument("--precision", help="32-true, bf16-mixed, ... (LOOPKIT_PRECISION)")
    p.add_argument(
        "-m", "--module", action="store_true", help="SCRIPT is a module name, as for python -m"
    )  # fmt: skip
    p.add_argument("script", help="the training script (or module with -m)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments of the script")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os
    import typing as t

    from loopkit.plugins import KNOWN, registry

    def fail(message: str) -> int:
        print(f"loopkit run: {message}", file=sys.stderr)
        return 2

    if not 0 <= args.node_rank < args.num_nodes:
        return fail(f"--node-rank {args.node_rank} is outside 0..{args.num_nodes - 1}")
    if args.num_nodes > 1 and not args.main_address:
        return fail(
            f"--num-nodes {args.num_nodes} needs --main-address (the address of the node started "
            "with --node-rank 0) and the same --main-port on every node"
        )
    if not args.module and not os.path.isfile(args.script):
        return fail(f"no script {args.script!r} (pass -m to run a module)")
    devices = args.devices
    if devices == "auto":
        import torch

        wants_gpu = args.accelerator in (None, "auto", "cuda", "gpu")
        devices = torch.cuda.device_count() if wants_gpu and torch.cuda.is_available() else 1
    strategy = args.strategy
    if strategy is None and devices * args.num_nodes > 1:
        strategy = "ddp"
    if strategy is not None and strategy not in registry():
        hint = KNOWN.get(strategy)
        return fail(
            f"no strategy named {strategy!r} is installed"
            + (f"; it is provided by {hint[1]}: pip install {hint[1]}" if hint else "")
        )
    settings = {
        "LOOPKIT_ACCELERATOR": args.accelerator,
        "LOOPKIT_DEVICES": str(devices),
        "LOOPKIT_NUM_NODES": str(args.num_nodes),
        "LOOPKIT_STRATEGY": strategy,
        "LOOPKIT_PRECISION": args.precision,
    }
    for key, value in settings.items():
        if value is not None:
            os.environ[key] = value  # the launcher's workers inherit its environment

    from torch.distributed import run as elastic
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launcher_args = [
        f"--nproc-per-node={devices}",
        f"--nnodes={args.num_nodes}",
        f"--node-rank={args.node_rank}",
    ]
    if args.main_address:
        launcher_args.append(f"--master-addr={args.main_address}")
    if args.main_port is not None:
        launcher_args.append(f"--master-port={args.main_port}")
    if args.module:
        launcher_args.append("--module")
    launcher_args += [args.script, *args.script_args]
    try:
        elastic.run(elastic.parse_args(launcher_args))  # type: ignore[no-untyped-call]
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        # The error file's message is a str, or a dict holding the message and the traceback.
        message: t.Any = failure.message
        trace = ""
        if isinstance(message, dict):
            trace = str(message.get("extraInfo", {}).get("py_callstack", ""))
            message = message.get("message", "")
        if str(message).startswith("To enable traceback"):
            message = "its traceback is above"  # the rank wrote no error file
        if failure.exitcode < 0:
            how = f"was killed by signal {failure.signal_name()}"
        else:
            how = f"exited with code {failure.exitcode}"
        lines = ["", f"loopkit run: rank {rank} (local rank {failure.local_rank}) failed first "
                     f"and {how}" + (f": {message}" if message else "")]  # fmt: skip
        if trace:
            lines.append(trace.rstrip())
        for other in sorted(r for r in err.failures if r != rank):
            code = err.failures[other].exitcode
            end = f"signal {err.failures[other].signal_name()}" if code < 0 else f"exit code {code}"
            lines.append(f"loopkit run: rank {other} stopped after it ({end})")
        print("\n".join(lines), file=sys.stderr)
        return 1
    return 0


# -- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``loopkit`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="loopkit", description="loopkit command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plugins(sub)
    _add_run(sub)
    return parser


def main(argv: c.Sequence[str] | None = None) -> int:
    """Run ``loopkit`` with ``argv`` (default: the process's arguments); return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
