#!/usr/bin/env bash
# loopkit-xla's tests, in the XLA env that scripts/env.sh builds (torch 2.9.0 + torch_xla 2.9.0,
# loopkit core and this plugin only), on PJRT's CPU client. `./dev test` runs this script.
#
#   plugins/xla/scripts/test.sh [PYTEST ARGS...]
#
# 1. every test in plugins/xla/tests with loopkit core and loopkit-xla only;
# 2. the bf16 tests again with loopkit-precision importable (PYTHONPATH), when it is in the repo.
# Exit status: pytest's (the first failing pass wins). When the disk is too small for the env,
# one line says so and the script exits 0: that is a machine's limit, not a test failure.
set -uo pipefail

HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
PLUGIN="$(dirname "$HERE")"
ROOT="$(cd "$PLUGIN/../.." && pwd)"

rc=0
PY="$(bash "$HERE/env.sh" | tail -n 1)" || rc=$?
if ((rc == 3)); then
    echo "$PY"   # env.sh's one-line reason
    exit 0
elif ((rc != 0)); then
    echo "loopkit-xla: building the XLA env failed (exit $rc); see the messages above" >&2
    exit "$rc"
fi

export PJRT_DEVICE=CPU
# The tests start their own CPU devices; inherited settings would change what they compare.
unset CPU_NUM_DEVICES XLA_USE_SPMD PYTHONPATH
cd "$PLUGIN" || exit 1

status=0
"$PY" -m pytest -p no:cacheprovider -q tests "$@" || status=$?

if [[ -d "$ROOT/plugins/precision/loopkit_precision" ]]; then
    echo "loopkit-xla: bf16 tests with loopkit-precision importable"
    second=0
    PYTHONPATH="$ROOT/plugins/precision" "$PY" -m pytest -p no:cacheprovider -q \
        tests/test_xla_cpu.py -k bf16 "$@" || second=$?
    if ((status == 0 || status == 5)) && ((second != 0 && second != 5)); then
        status=$second
    fi
fi
exit "$status"
