#!/bin/sh
# Installs what the tests need on a Debian dom0 or build host, idempotently:
# - xenstore-utils: Debian's real libxenstore clients, run against the
#   simulator to prove it;
# - Debian's stock `block` script (package xen-utils-common), unpacked under
#   target/stock, never installed: the differential suite and the benchmark
#   run it as the reference peer;
# - /var/log/xen, where the stock scripts send their stderr.
set -eu
cd "$(dirname "$0")/.."
need=""
command -v xenstore-write >/dev/null 2>&1 || need="$need xenstore-utils"
command -v losetup >/dev/null 2>&1 || need="$need mount"
command -v flock >/dev/null 2>&1 || need="$need util-linux"
command -v logger >/dev/null 2>&1 || need="$need bsdutils"
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
mkdir -p /var/log/xen
if [ ! -x target/stock/etc/xen/scripts/block ]; then
    mkdir -p target/stock-deb
    (cd target/stock-deb && rm -f ./*.deb && apt-get download xen-utils-common >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download xen-utils-common >/dev/null; })
    rm -rf target/stock
    dpkg-deb -x target/stock-deb/xen-utils-common_*.deb target/stock
fi
echo "prepare: xenstore-utils and target/stock/etc/xen/scripts/block ready"
