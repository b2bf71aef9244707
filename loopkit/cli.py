"""The ``loopkit`` command.

Each subcommand is one ``_add_<name>(subparsers)`` function that builds its parser and sets
``func`` to the function that runs it (``func(args) -> exit status``); :func:`main` only
dispatches. Subcommands import what they need when they run, so ``loopkit --help`` stays fast.

- ``loopkit plugins``: list installed plugins (name, kind, distribution, version, whether it
  loads); exits with 1 when any fails to load.
"""

from __future__ import annotations

import argparse
import collections.abc as c
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
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    return 0 if all(r.loads == "ok" for r in rows) else 1


# -- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``loopkit`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="loopkit", description="loopkit command line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_plugins(sub)
    return parser


def main(argv: c.Sequence[str] | None = None) -> int:
    """Run ``loopkit`` with ``argv`` (default: the process's arguments); return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
