#!/bin/sh
# Installs what the tests need on a Debian dom0 or build host, idempotently:
# - xenstore-utils: Debian's real libxenstore clients, run against the
#   simulator to prove it;
# - Debian's stock `block` script (package xen-utils-common), unpacked under
#   target/stock, never installed: the differential suite and the benchmark
#   run it as the reference peer;
# - /var/log/xen, where the stock scripts send their stderr;
# - Debian's real xenstored and xl (xen-utils-4.17 and the libraries they
#   link), unpacked under target/xen, never installed, and the LD_PRELOAD
#   shim (tests/xen-shim) that lets them run without a hypervisor; the
#   test bed, tests/it/xl.rs and the benchmark run them (and skip loudly when
#   they are missing).
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
# Debian 12's xenstored and xl, unpacked, never installed.
xen_pkgs="xen-utils-4.17 libxenmisc4.17 libxenevtchn1 libxengnttab1 libxentoollog1
libxentoolcore1 libxencall1 libxenforeignmemory1 libxendevicemodel1 libxenstore4
libxenhypfs1 libyajl2 libxen-dev"
xen_ok=target/xen/.unpacked
if [ ! -f "$xen_ok" ] || [ "$(cat "$xen_ok")" != "$(echo $xen_pkgs)" ]; then
    mkdir -p target/xen-deb
    (cd target/xen-deb && rm -f ./*.deb &&
        { apt-get download $xen_pkgs >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get download $xen_pkgs >/dev/null; }; })
    rm -rf target/xen
    mkdir -p target/xen
    for deb in target/xen-deb/*.deb; do
        dpkg-deb -x "$deb" target/xen
    done
    echo $xen_pkgs >"$xen_ok"
fi
# The shim, rebuilt when its source changes.
shim_src=tests/xen-shim/xen-shim.c
shim=target/xen/xen-shim.so
if [ ! -f "$shim" ] || [ "$shim_src" -nt "$shim" ]; then
    command -v gcc >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
    }
    gcc -shared -fPIC -O2 -Wall -Wextra -Werror -I target/xen/usr/include \
        -o "$shim.tmp" "$shim_src" -ldl
    mv "$shim.tmp" "$shim"
fi
echo "prepare: xenstore-utils, target/stock/etc/xen/scripts/block, target/xen (xenstored, xl, shim) ready"
