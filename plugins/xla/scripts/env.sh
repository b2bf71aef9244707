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

stamp() {
    {
        echo "root=$ROOT"
        "$PYTHON" -c 'import sys; print(sys.version)'
        cat "$HERE/env.sh" "$PINS" "$ROOT/pyproject.toml" "$PLUGIN/pyproject.toml"
    } | sha256sum | cut -d' ' -f1
}

want="$(stamp)"
if [[ -z "${LOOPKIT_XLA_REINSTALL:-}" && -x "$VENV/bin/python" && -f "$VENV/.stamp" \
      && "$(cat "$VENV/.stamp")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import torch_xla, loopkit_xla' 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi

mkdir -p "$CACHE"
# Free space counts only when torch is not installed yet (a refresh of the editables needs none).
if ! "$VENV/bin/python" -c 'import torch_xla' 2>/dev/null; then
    free_kb="$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')"
    if ((free_kb < NEED_GB * 1024 * 1024)); then
        echo "loopkit-xla: skipped, $((free_kb / 1024 / 1024)) GB free under $CACHE and the XLA env (torch 2.9 + torch_xla 2.9) needs ${NEED_GB} GB"
        exit 3
    fi
fi

quiet_pip() { # pip, with this machine's noise about missing index folders dropped
    "$VENV/bin/python" -m pip install -q --no-compile --find-links "$WHEELS" "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

t0=$SECONDS
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
quiet_pip --no-build-isolation --no-deps -e "$ROOT" -e "$PLUGIN"
"$VENV/bin/python" -c 'import torch, torch_xla, loopkit, loopkit_xla; print("loopkit-xla: env ready, torch", torch.__version__, "torch_xla", torch_xla.__version__)' >&2
echo "$want" > "$VENV/.stamp"
echo "loopkit-xla: env built in $((SECONDS - t0)) s" >&2
echo "$VENV/bin/python"
