"""The ``loopkit`` command: ``loopkit plugins`` lists installed plugins."""

from __future__ import annotations

import argparse
import collections.abc as c
import sys


def _plugins(args: argparse.Namespace) -> int:
    from loopkit.plugins import registry

    rows = [("name", "kind", "distribution", "version", "loads")]
    for info, kind, status in sorted(registry().status(), key=lambda r: (r[1], r[0].name)):
        rows.append((info.name, kind, info.distribution, info.version, status))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    return 0 if all(r[4] == "ok" for r in rows[1:]) else 1


def main(argv: c.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loopkit", description="loopkit command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed plugins: name, kind, distribution, version")
    p.set_defaults(func=_plugins)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
