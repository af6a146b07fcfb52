#!/usr/bin/env bash
# Install WAL-E 1.1.1 (the last release) and lzop for bench/wal_bench.py's (b) peer variant:
# WAL-E's parallel wal-push is the yardstick the WAL issue names. Bench only: the test suite
# and CI never use it. Idempotent; run as root.
set -euo pipefail

DEST=${WALE_VENV:-/opt/wale/venv}

if ! command -v lzop >/dev/null; then
    apt-get install -y -q --no-install-recommends lzop >/dev/null
fi
if [[ ! -x $DEST/bin/wal-e ]]; then
    mkdir -p "$(dirname "$DEST")"
    /usr/bin/python3 -m venv "$DEST"
    "$DEST/bin/pip" install -q 'wal-e==1.1.1'
fi
"$DEST/bin/wal-e" version
