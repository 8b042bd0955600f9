#!/usr/bin/env bash
# Make sure the wal2json output plugin is installed for the system PostgreSQL, on which the
# tests run what needs wal2json (the embedded PostgreSQL 18, the default, has none and no
# package exists for it). It picks the system server the way cdc_bridge.dev.pginstall does
# (CDC_BRIDGE_PG_BINDIR, then pg_config --bindir, then the newest /usr/lib/postgresql/*/bin),
# so both agree on the major.
# Prints one line. Installs with apt-get only as root; otherwise (or if that fails) it warns
# and exits 0: the tests that need wal2json then say so themselves.
set -euo pipefail

has_server() { [[ -x "$1/initdb" && -x "$1/postgres" ]]; }

find_bindir() {
    if [[ -n "${CDC_BRIDGE_PG_BINDIR:-}" ]]; then
        has_server "$CDC_BRIDGE_PG_BINDIR" && echo "$CDC_BRIDGE_PG_BINDIR"
        return 0
    fi
    local candidate
    if command -v pg_config >/dev/null 2>&1; then
        candidate=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n "$candidate" ]] && has_server "$candidate"; then
            echo "$candidate"
            return 0
        fi
    fi
    # newest major first: version sort so that 15 beats 9.6
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if has_server "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
}

bindir=$(find_bindir)
if [[ -z "$bindir" ]]; then
    echo "ensure-wal2json: WARNING: no system PostgreSQL found (apt-get install postgresql postgresql-15-wal2json); the wal2json tests will say they need it" >&2
    exit 0
fi

# "postgres (PostgreSQL) 15.20 (Debian ...)" -> 15
major=$("$bindir/postgres" --version | sed -E 's/^[^0-9]*([0-9]+).*/\1/')
if [[ -x "$bindir/pg_config" ]]; then
    libdir=$("$bindir/pg_config" --pkglibdir)
else
    libdir="$(dirname "$bindir")/lib"
fi

if [[ -f "$libdir/wal2json.so" ]]; then
    echo "ensure-wal2json: wal2json present for PostgreSQL $major ($libdir/wal2json.so)"
    exit 0
fi

package="postgresql-$major-wal2json"
if [[ "$(id -u)" -ne 0 ]]; then
    echo "ensure-wal2json: WARNING: wal2json missing for PostgreSQL $major and not root: install $package (sudo apt-get install -y $package)" >&2
    exit 0
fi

apt_log=$(mktemp)
if { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$package"; } >"$apt_log" 2>&1 \
        && [[ -f "$libdir/wal2json.so" ]]; then
    echo "ensure-wal2json: installed $package ($libdir/wal2json.so)"
    rm -f "$apt_log"
else
    echo "ensure-wal2json: WARNING: could not install $package (apt-get output: $apt_log); wal2json tests will fail" >&2
fi
