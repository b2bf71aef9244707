#!/usr/bin/env bash
# Build (once) and reuse the XLA test environment: torch 2.9.0 + torch_xla 2.9.0, loopkit core and
# loopkit-xla (both editable, no deps) in a venv OUTSIDE the repository.
#
#   plugins/xla/scripts/env.sh          build or refresh the env; print its python on the last line
#
# Where: ${LOOPKIT_XLA_CACHE:-$HOME/.cache/loopkit-xla}/venv; wheels that pip downloads are kept in
# .../wheels and reused. torch 2.9.0 with its CUDA libraries is ~4 GB of downloads and ~7 GB on
# disk, so the script checks free space first.
# Exit status: 0 built or up to date; 3 not enough disk (one line on stdout says so); other: failure.
# The env is rebuilt only when its inputs change (this script, the pins, the two pyproject.toml
# files, the repository path); LOOPKIT_XLA_REINSTALL=1 forces it.
set -euo pipefail

HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
PLUGIN="$(dirname "$HERE")"
ROOT="$(cd "$PLUGIN/../.." && pwd)"
CACHE="${LOOPKIT_XLA_CACHE:-$HOME/.cache/loopkit-xla}"
VENV="$CACHE/venv"
WHEELS="$CACHE/wheels"
PYTHON="${PYTHON:-python3}"
PINS="$PLUGIN/constraints-xla.txt"
NEED_GB="${LOOPKIT_XLA_NEED_GB:-8}"

# The repository's own pins (torch==2.13.0, exported by ./dev) must not reach this env.
export PIP_CONSTRAINT="$PINS"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Two stamps: the heavy part (torch, torch_xla: only the pins and the interpreter matter) and the
# editable installs (the repository path and both pyproject.toml files, whose entry points the
# installs record). Editing a pyproject.toml redoes the second part only.
heavy_stamp() {
    { "$PYTHON" -c 'import sys; print(sys.version)'; cat "$PINS"; } | sha256sum | cut -d' ' -f1
}
editable_stamp() {
    { echo "root=$ROOT"; cat "$HERE/env.sh" "$ROOT/pyproject.toml" "$PLUGIN/pyproject.toml"; } \
        | sha256sum | cut -d' ' -f1
}
has() { # has MODULE...: the env's python finds them (without importing them: torch_xla is slow)
    "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' "$@" 2>/dev/null
}
quiet_pip() { # pip, with this machine's noise about missing index folders dropped
    "$VENV/bin/python" -m pip install -q --no-compile --find-links "$WHEELS" "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

heavy="$(heavy_stamp)"
editable="$(editable_stamp)"
[[ -n "${LOOPKIT_XLA_REINSTALL:-}" ]] && rm -f "$VENV/.stamp-heavy" "$VENV/.stamp-editable"
heavy_ok=0
if [[ -f "$VENV/.stamp-heavy" && "$(cat "$VENV/.stamp-heavy")" == "$heavy" ]] \
   && has torch torch_xla blinker structlog pytest; then
    heavy_ok=1
fi
if ((heavy_ok)) && [[ -f "$VENV/.stamp-editable" \
      && "$(cat "$VENV/.stamp-editable")" == "$editable" ]] && has loopkit loopkit_xla; then
    echo "$VENV/bin/python"
    exit 0
fi

t0=$SECONDS
mkdir -p "$CACHE"
if ((!heavy_ok)); then
    # Free space counts only when torch is not installed yet.
    if ! has torch_xla; then
        free_kb="$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')"
        if ((free_kb < NEED_GB * 1024 * 1024)); then
            echo "loopkit-xla: skipped, $((free_kb / 1024 / 1024)) GB free under $CACHE and the XLA env (torch 2.9 + torch_xla 2.9) needs ${NEED_GB} GB"
            exit 3
        fi
    fi
    echo "loopkit-xla: building the XLA env in $VENV (first time: several minutes)" >&2
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    mkdir -p "$WHEELS"
    # Wheels are downloaded into the cache first, so a rebuilt env reinstalls without downloading.
    "$VENV/bin/python" -m pip download -q -d "$WHEELS" --find-links "$WHEELS" \
        torch==2.9.0 torch_xla==2.9.0 \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    quiet_pip "setuptools>=68" wheel
    quiet_pip torch==2.9.0 torch_xla==2.9.0 blinker structlog pytest numpy
    echo "$heavy" > "$VENV/.stamp-heavy"
fi
echo "loopkit-xla: installing loopkit core and loopkit-xla (editable) into $VENV" >&2
quiet_pip --no-build-isolation --no-deps -e "$ROOT" -e "$PLUGIN"
has torch torch_xla loopkit loopkit_xla || { echo "loopkit-xla: the env is incomplete" >&2; exit 1; }
echo "$editable" > "$VENV/.stamp-editable"
echo "loopkit-xla: env ready in $((SECONDS - t0)) s" >&2
echo "$VENV/bin/python"
