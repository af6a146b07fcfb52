#!/usr/bin/env bash
# Install what the tests need (scripts/setup.sh), lint, type-check, run the test suite.
# Extra arguments go to pytest, e.g.: scripts/test.sh -k pgcluster -x
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPT=${WALG_OPT:-/opt/walg}
PY=$OPT/venv/bin/python

step() {
    local name=$1
    shift
    echo "==> $name"
    local start=$SECONDS rc=0
    "$@" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "FAILED: $name (exit $rc)" >&2
        exit "$rc"
    fi
    echo "    $name ok ($((SECONDS - start))s)"
}

step "setup" bash "$REPO/scripts/setup.sh"
cd "$REPO" || exit 1

lint_paths=()
for d in src tests bench scripts bin/walg; do
    [[ -e $d ]] && lint_paths+=("$d")
done

step "ruff check" "$PY" -m ruff check "${lint_paths[@]}"
step "ruff format --check" "$PY" -m ruff format --check "${lint_paths[@]}"
step "mypy" "$PY" -m mypy

# Test paths given on the command line replace the default "tests".
targets=(tests)
for arg in "$@"; do
    if [[ $arg != -* && -e ${arg%%::*} ]]; then
        targets=()
        break
    fi
done

# Test processes at once (pytest-xdist): most tests wait on PostgreSQL (start-up, checkpoints,
# replay) rather than use a CPU; on two cores one process took 21.6 minutes here, three 13-14.
# Two keep the machine less loaded. WALG_TEST_WORKERS=0 runs everything in this one process.
# The slowest tests are listed at the end, to see where the time goes before it runs out.
workers=${WALG_TEST_WORKERS:-2}
echo "==> pytest ($workers workers)"
rc=0
"$PY" -m pytest -q -p no:cacheprovider --durations=15 -n "$workers" "${targets[@]}" "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "FAILED: pytest collected no tests (exit 5)" >&2
    exit 5
elif [[ $rc -ne 0 ]]; then
    echo "FAILED: pytest (exit $rc)" >&2
    exit "$rc"
fi
echo "    pytest ok"
