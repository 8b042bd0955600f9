#!/usr/bin/env bash
# Make sure promtool is there for tests/unit/test_deploy_files.py (it checks and unit-tests
# deploy/prometheus/alerts.yml). It comes from Debian's prometheus package, but only the
# binary is taken (apt-get download, dpkg-deb -x) into .venv/bin: installing the package
# would also install and start a Prometheus server on this machine.
# Prints one line. Without apt-get (or if the download fails) it warns and exits 0: the
# test then says what is missing.
set -euo pipefail

target=".venv/bin/promtool"
if command -v promtool >/dev/null 2>&1 || [[ -x "$target" ]]; then
    echo "ensure-promtool: present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    echo "ensure-promtool: WARNING: no apt-get/dpkg-deb to fetch promtool (Debian package prometheus)" >&2
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download sandbox user must be able to write here
fetch() { (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); }
if ! fetch; then
    # A fresh machine may not have package lists yet.
    if [[ $(id -u) -eq 0 ]] && apt-get update -qq >/dev/null 2>&1 && fetch; then
        :
    else
        echo "ensure-promtool: WARNING: could not download the prometheus package" >&2
        exit 0
    fi
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/promtool" "$target"
echo "ensure-promtool: installed $target ($("$target" --version 2>&1 | head -n 1))"
