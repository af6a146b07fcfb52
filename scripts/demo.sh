#!/usr/bin/env bash
# Install walg (and PostgreSQL) with scripts/setup.sh, then run the end-to-end demo:
# a throwaway cluster backed up to a local folder, restored, recovered and verified.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPT=${WALG_OPT:-/opt/walg}
bash "$REPO/scripts/setup.sh"
exec "$OPT/venv/bin/python" "$REPO/scripts/demo.py" "$@"
