#!/bin/bash
# The .deb's install / upgrade / remove cycle, for real, with dpkg on this
# machine:
#   1. install a stand-in for xen-utils-common that owns
#      /etc/xen/scripts/block as a conffile (xen-utils-common itself pulls in
#      the Xen libraries, python3 and more);
#   2. install ours: /etc/xen/scripts/block runs our binary, the stock script
#      sits at block.xen-stock byte for byte, one diversion;
#   3. reinstall, then upgrade ours (a rebuilt -2): still one diversion;
#   4. upgrade the stand-in, which lays the real stock script down again: it
#      lands at block.xen-stock, ours stays;
#   5. remove ours: the stock script is back at block byte for byte, no
#      diversion; purge the stand-in.
#   5b. upgrade from the layout of 0.1.0-1 before the recogniser (the link
#      shipped as a file of the package, diverted unconditionally): dpkg
#      drops the link as an obsolete file, the postinst makes it again;
#      one diversion, the stock script kept; remove gives it back.
#   6. a foreign block, a site's own script (no package's) and then a
#      vendor's variant (the stand-in's): installing ours leaves it byte for
#      byte and diverts nothing, says so on the terminal, installs the
#      binary; removing ours leaves the script alone.
# Throughout, the cleanup timer: enabled (its timers.target.wants link, made
# by deb-systemd-helper whether or not systemd runs) after each install and
# upgrade, gone after the remove.
# Skips a host that has anything at /etc/xen/scripts/block (a real dom0 is
# not a test bed), fails on one where either package is known to dpkg (a
# leftover), and leaves no package, no diversion and no file behind, even
# when a step fails.
#
# Usage: tests/packaging/deb-cycle.sh [OUR.deb]  (default: the one
# packaging/build.sh left in target/packages). Needs root, dpkg, and
# tests/prepare.sh's target/stock.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

ours_pkg=xen-block-hotplug
standin_pkg=xen-block-stock-standin
script=/etc/xen/scripts/block
stock_copy=/etc/xen/scripts/block.xen-stock
stock="$root/target/stock/etc/xen/scripts/block"

skip() {
    echo "deb-cycle: SKIPPED: $*" >&2
    exit 0
}
fail() {
    echo "deb-cycle: FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || skip "needs root (installs packages)"
command -v dpkg >/dev/null || skip "needs dpkg"
[ -f "$stock" ] || fail "$stock missing: run tests/prepare.sh"

deb="${1:-}"
if [ -z "$deb" ]; then
    deb=$(ls -t "$root"/target/packages/${ours_pkg}_*_amd64.deb 2>/dev/null | head -n1 || true)
fi
[ -f "$deb" ] || fail "no .deb: run packaging/build.sh"

# A real dom0, or a cycle that was killed half-way: touch nothing.
for p in "$ours_pkg" "$standin_pkg"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -qv 'not-installed'; then
        fail "$p is known to dpkg on this host; not touching it (dpkg --purge $p if it is a leftover)"
    fi
done
# A real Xen host is not a test bed: skip, loudly, rather than fail its CI.
if [ -e "$script" ] || [ -L "$script" ] || [ -e "$stock_copy" ]; then
    skip "$script or $stock_copy exists on this host (a Xen install?); not touching it"
fi
timer_link=/etc/systemd/system/timers.target.wants/xen-block-hotplug-cleanup.timer
[ -e "$timer_link" ] || [ -L "$timer_link" ] && fail "$timer_link exists on this host (a leftover?)"
[ -n "$(dpkg-divert --list "$script")" ] && fail "$script is diverted on this host: $(dpkg-divert --list "$script")"

# Directories this test may create, so cleanup removes only those.
new_dirs=()
for d in /etc/xen/scripts /etc/xen; do
    [ -d "$d" ] || new_dirs+=("$d")
done

work=$(mktemp -d /tmp/deb-cycle.XXXXXX)

# dpkg takes a lock that apt-get on the same machine may hold for a while.
dpkg_retry() {
    for _ in $(seq 1 120); do
        if dpkg "$@" >"$work/dpkg.log" 2>&1; then
            return 0
        fi
        grep -q 'lock' "$work/dpkg.log" || { cat "$work/dpkg.log" >&2; return 1; }
        sleep 1
    done
    cat "$work/dpkg.log" >&2
    return 1
}

cleanup() {
    local status=$?
    set +e
    dpkg_retry --purge "$ours_pkg" "$standin_pkg"
    # A failed maintainer script may have left our diversion behind.
    if dpkg-divert --list "$script" | grep -q "$ours_pkg"; then
        dpkg-divert --package "$ours_pkg" --rename --divert "$stock_copy" --remove "$script" >/dev/null
    fi
    rm -f "$stock_copy" "$script" "$script.dpkg-new" "$script.dpkg-old" "$script.dpkg-dist"
    case $(readlink "$timer_link") in
    */lib/systemd/system/xen-block-hotplug-cleanup.timer) rm -f "$timer_link" ;;
    esac
    for d in "${new_dirs[@]}"; do
        rmdir "$d" 2>/dev/null
    done
    rm -rf "$work"
    if [ -n "$(dpkg-divert --list "$script")" ] || dpkg -s "$ours_pkg" >/dev/null 2>&1 ||
        dpkg -s "$standin_pkg" >/dev/null 2>&1; then
        echo "deb-cycle: cleanup left state behind, see dpkg -l and dpkg-divert --list" >&2
        status=1
    fi
    [ $status = 0 ] && echo "deb-cycle: PASS"
    exit $status
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# The stand-in: VERSION's block is the real stock script plus a marker line,
# so that step 4 can tell the upgrade's copy from the first one.
standin() {
    local version=$1 body=$2 d="$work/standin-$1"
    mkdir -p "$d/DEBIAN" "$d/etc/xen/scripts"
    cp "$body" "$d/etc/xen/scripts/block"
    chmod 0755 "$d/etc/xen/scripts/block"
    echo /etc/xen/scripts/block >"$d/DEBIAN/conffiles"
    cat >"$d/DEBIAN/control" <<EOF
Package: $standin_pkg
Version: $version
Architecture: all
Maintainer: xen-block-hotplug tests <root@localhost>
Description: stand-in for xen-utils-common owning /etc/xen/scripts/block
EOF
    dpkg-deb --root-owner-group --build "$d" "$work/standin-$version.deb" >/dev/null
    echo "$work/standin-$version.deb"
}
cp "$stock" "$work/stock-1"
printf '# stand-in 1\n' >>"$work/stock-1"
standin_1=$(standin 1 "$work/stock-1")
standin_2=$(standin 2 "$stock")

# Ours, rebuilt with a higher revision: a genuine upgrade of the same files.
ver=$(dpkg-deb -f "$deb" Version)
dpkg-deb -R "$deb" "$work/ours-2"
sed -i "s/^Version: .*/Version: ${ver%-*}-99/" "$work/ours-2/DEBIAN/control"
dpkg-deb --root-owner-group -Zxz --build "$work/ours-2" "$work/ours-2.deb" >/dev/null

diversions() {
    dpkg-divert --list "$script" | grep -c . || true
}
check_ours_in_place() {
    local what=$1 expect_stock=$2
    [ "$(readlink -f "$script")" = /usr/sbin/xen-block-hotplug ] ||
        fail "$what: $script is $(ls -l "$script")"
    local v
    v=$("$script" --version) || fail "$what: $script --version failed"
    [[ $v == "xen-block-hotplug "* ]] || fail "$what: $script --version says '$v'"
    cmp -s "$stock_copy" "$expect_stock" || fail "$what: $stock_copy is not the stock script"
    [ "$(diversions)" = 1 ] || fail "$what: $(diversions) diversions: $(dpkg-divert --list "$script")"
    dpkg-divert --list "$script" | grep -q "to $stock_copy by $ours_pkg" ||
        fail "$what: unexpected diversion: $(dpkg-divert --list "$script")"
    # deb-systemd-helper links to /lib/... or /usr/lib/... (merged /usr).
    [ "$(readlink -f "$timer_link")" = "$(readlink -f /usr/lib/systemd/system/xen-block-hotplug-cleanup.timer)" ] ||
        fail "$what: the cleanup timer is not enabled ($timer_link: $(ls -l "$timer_link" 2>&1))"
    echo "deb-cycle: $what: ok ($v; stock at $stock_copy; one diversion; timer enabled$timer_note)"
}
# This host's PID 1 is not systemd: the postinst enables the timer (the
# link) but cannot start it; on a systemd host it also starts it.
if [ -d /run/systemd/system ]; then
    timer_note=", systemd running"
else
    timer_note=", not started: PID 1 is $(ps -o comm= -p 1 2>/dev/null || echo unknown)"
fi

# 1.
dpkg_retry -i "$standin_1"
cmp -s "$script" "$work/stock-1" || fail "the stand-in did not install the stock script"

# 2.
dpkg_retry -i "$deb"
check_ours_in_place "install" "$work/stock-1"

# 3.
dpkg_retry -i "$deb"
check_ours_in_place "reinstall" "$work/stock-1"
dpkg_retry -i "$work/ours-2.deb"
check_ours_in_place "upgrade to ${ver%-*}-99" "$work/stock-1"

# 4.
dpkg_retry -i "$standin_2"
check_ours_in_place "upgrade of the stock script's package" "$stock"

# 5.
dpkg_retry -r "$ours_pkg"
[ -f "$script" ] && [ ! -L "$script" ] || fail "remove: $script is not a file: $(ls -l "$script" 2>&1)"
cmp -s "$script" "$stock" || fail "remove: $script is not the stock script byte for byte"
[ -x "$script" ] || fail "remove: $script lost its execute bit"
[ ! -e "$stock_copy" ] || fail "remove: $stock_copy left behind"
[ "$(diversions)" = 0 ] || fail "remove: diversion left: $(dpkg-divert --list "$script")"
[ ! -e "$timer_link" ] && [ ! -L "$timer_link" ] || fail "remove: the cleanup timer is still enabled: $(ls -l "$timer_link")"
[ ! -e /usr/lib/systemd/system/xen-block-hotplug-cleanup.timer ] || fail "remove: the timer unit is left"
echo "deb-cycle: remove: ok (stock script back byte for byte, no diversion, timer disabled and gone)"
dpkg_retry --purge "$ours_pkg" "$standin_pkg"
[ ! -e "$script" ] || fail "purge of the stand-in left $script"

# 5b. The earlier layout, rebuilt from ours: the link in the package, the
# earlier preinst/postrm (divert always; give back on remove), no postinst.
dpkg-deb -R "$deb" "$work/ours-old"
sed -i "s/^Version: .*/Version: ${ver%-*}-0/" "$work/ours-old/DEBIAN/control"
rm -f "$work/ours-old/DEBIAN/postinst" "$work/ours-old/DEBIAN/prerm"
mkdir -p "$work/ours-old/etc/xen/scripts"
ln -s /usr/sbin/xen-block-hotplug "$work/ours-old/etc/xen/scripts/block"
printf '#!/bin/sh\nset -e\ncase "$1" in install|upgrade) dpkg-divert --package %s --rename --divert %s --add %s >/dev/null ;; esac\nexit 0\n' \
    "$ours_pkg" "$stock_copy" "$script" >"$work/ours-old/DEBIAN/preinst"
printf '#!/bin/sh\nset -e\ncase "$1" in remove|abort-install|disappear) dpkg-divert --package %s --rename --divert %s --remove %s >/dev/null ;; esac\nexit 0\n' \
    "$ours_pkg" "$stock_copy" "$script" >"$work/ours-old/DEBIAN/postrm"
chmod 0755 "$work/ours-old/DEBIAN/preinst" "$work/ours-old/DEBIAN/postrm"
dpkg-deb --root-owner-group -Zxz --build "$work/ours-old" "$work/ours-old.deb" >/dev/null
dpkg_retry -i "$standin_2"
dpkg_retry -i "$work/ours-old.deb"
[ "$(readlink "$script")" = /usr/sbin/xen-block-hotplug ] || fail "the earlier layout did not install"
dpkg_retry -i "$deb"
check_ours_in_place "upgrade from the earlier layout (${ver%-*}-0)" "$stock"
dpkg_retry -r "$ours_pkg"
cmp -s "$script" "$stock" || fail "remove after the layout upgrade: $script is not the stock script"
[ "$(diversions)" = 0 ] || fail "remove after the layout upgrade: diversion left"
echo "deb-cycle: remove after the layout upgrade: ok (stock script back byte for byte)"
dpkg_retry --purge "$ours_pkg" "$standin_pkg"

# 6.
printf '#!/bin/sh\n# site SAN wrapper\nexec /usr/local/sbin/san-block "$@"\n' >"$work/site-block"
sed 's/write_dev/vendor_write_node/g' "$stock" >"$work/vendor-block"
standin_vendor=$(standin 3 "$work/vendor-block")
for foreign in site vendor; do
    if [ $foreign = site ]; then
        mkdir -p /etc/xen/scripts
        install -m 0755 "$work/site-block" "$script"
    else
        dpkg_retry -i "$standin_vendor"
    fi
    dpkg_retry -i "$deb"
    cmp -s "$script" "$work/$foreign-block" || fail "$foreign: $script changed by the install"
    [ ! -L "$script" ] || fail "$foreign: $script became a link"
    [ "$(diversions)" = 0 ] || fail "$foreign: diverted: $(dpkg-divert --list "$script")"
    [ ! -e "$stock_copy" ] || fail "$foreign: $stock_copy appeared"
    /usr/sbin/xen-block-hotplug --version >/dev/null || fail "$foreign: the binary is not installed"
    grep -qF "xen-block-hotplug: $script is a file that is not Xen's stock script" "$work/dpkg.log" ||
        fail "$foreign: the install did not say what it found: $(cat "$work/dpkg.log")"
    grep -qF "ln -s /usr/sbin/xen-block-hotplug $script" "$work/dpkg.log" ||
        fail "$foreign: the install did not say how to switch"
    dpkg_retry -r "$ours_pkg"
    cmp -s "$script" "$work/$foreign-block" || fail "$foreign: $script changed by the remove"
    [ "$(diversions)" = 0 ] || fail "$foreign: diversion after remove"
    echo "deb-cycle: a $foreign's own block: left byte for byte by install and remove, binary installed, admin told"
    dpkg_retry --purge "$ours_pkg"
    if [ $foreign = site ]; then
        rm -f "$script"
    else
        dpkg_retry --purge "$standin_pkg"
    fi
done
