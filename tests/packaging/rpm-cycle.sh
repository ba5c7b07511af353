#!/bin/bash
# The .rpm's scriptlets, run for real by `rpm --root` in a throwaway tree
# (rpm chroots into it for scriptlets; the tree gets dash and the few
# coreutils they call). Nothing on this host is touched.
#
# For each way a Xen tools package may ship /etc/xen/scripts/block
# (%config(noreplace) as xen-runtime, %config, a plain file as xen-tools):
#   A. Xen first: install the stand-in, install ours (block runs our
#      binary, the stock script at block.xen-stock byte for byte), upgrade
#      ours, update the stand-in (the trigger puts ours back and keeps the
#      new stock script), erase ours (the stock script is back byte for
#      byte, nothing left over).
#   C. A foreign block, the Xen package's own variant or a site's own
#      script: installing ours leaves it byte for byte, moves nothing,
#      says so, installs the binary; erasing ours leaves it alone.
#   B. Ours first: install ours on a host without Xen (nothing happens),
#      install the stand-in (the trigger swaps ours in), erase the stand-in
#      (nothing of it left), erase ours.
#
# Usage: tests/packaging/rpm-cycle.sh [OUR.rpm]  (default: the one
# packaging/build.sh left in target/packages). Needs root (chroot), rpm,
# rpmbuild, rpm2cpio and cpio, and tests/prepare.sh's target/stock.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
stock="$root/target/stock/etc/xen/scripts/block"

skip() {
    echo "rpm-cycle: SKIPPED: $*" >&2
    exit 0
}
fail() {
    echo "rpm-cycle: FAIL: $*" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || skip "needs root (rpm chroots into the test tree)"
for tool in rpm rpmbuild rpm2cpio cpio; do
    command -v "$tool" >/dev/null || skip "needs $tool (apt-get install rpm cpio)"
done
[ -f "$stock" ] || fail "$stock missing: run tests/prepare.sh"
ours="${1:-}"
if [ -z "$ours" ]; then
    ours=$(ls -t "$root"/target/packages/xen-block-hotplug-*.x86_64.rpm 2>/dev/null | head -n1 || true)
fi
[ -f "$ours" ] || fail "no .rpm: run packaging/build.sh"

work=$(mktemp -d /tmp/rpm-cycle.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A package built from a spec body, with files from a directory.
build_rpm() {
    local name=$1 version=$2 release=$3 files=$4 top="$work/build-$1-$2-$3"
    mkdir -p "$top"
    rpmbuild --quiet -bb --target x86_64 \
        --define "_topdir $top" --define "_binary_payload w9.gzdio" \
        --define "debug_package %{nil}" --define "__os_install_post %{nil}" \
        --define "_build_id_links none" \
        --define "src $files" \
        "$work/$name.spec" >/dev/null
    ls "$top"/RPMS/*/"$name-$version-$release".*.rpm
}

# The stand-in Xen tools package: NAME VERSION FILE-ATTR BODY.
standin() {
    local name=$1 version=$2 attr=$3 body=$4
    mkdir -p "$work/standin-src-$name-$version"
    cp "$body" "$work/standin-src-$name-$version/block"
    cat >"$work/$name.spec" <<EOF
Name: $name
Version: $version
Release: 1
Summary: stand-in owning /etc/xen/scripts/block
License: GPL-2.0-only
BuildArch: noarch
%description
stand-in for the Xen tools package
%install
install -D -m 0755 %{src}/block %{buildroot}/etc/xen/scripts/block
%files
%dir /etc/xen
%dir /etc/xen/scripts
$attr /etc/xen/scripts/block
EOF
    build_rpm "$name" "$version" 1 "$work/standin-src-$name-$version"
}

# Ours again with release 99: the same files, a genuine upgrade, from the
# sources build.sh gave rpmbuild (checked to be the ones in OUR.rpm).
sources="$root/target/packages/work/rpmbuild/SOURCES"
[ -f "$sources/xen-block-hotplug" ] || fail "$sources missing: run packaging/build.sh"
mkdir -p "$work/ours-files"
(cd "$work/ours-files" && rpm2cpio "$ours" | cpio -idm --quiet)
cmp -s "$sources/xen-block-hotplug" "$work/ours-files/usr/sbin/xen-block-hotplug" ||
    fail "$sources is not what $ours was built from: run packaging/build.sh"
ours_version=$(rpm -qp --qf '%{VERSION}' "$ours")
ours_99=$(rpmbuild --quiet -bb --target x86_64 --define "_topdir $work/build-ours-99" \
    --define "_sourcedir $sources" \
    --define "pkg_version $ours_version" --define "pkg_release 99" \
    "$root/target/packages/work/xen-block-hotplug.spec" >/dev/null &&
    ls "$work"/build-ours-99/RPMS/x86_64/*.rpm)

# A fresh tree with what the scriptlets run.
new_root() {
    local r=$1 tool lib
    mkdir -p "$r/bin" "$r/usr/bin" "$r/tmp"
    for tool in sh dash mv ln rm readlink grep cat tr cut head mkdir; do
        cp -L "$(command -v $tool)" "$r/bin/$tool"
        cp -L "$(command -v $tool)" "$r/usr/bin/$tool"
        for lib in $(ldd "$(command -v $tool)" | grep -o '/[^ ]*'); do
            mkdir -p "$r$(dirname "$lib")"
            cp -L "$lib" "$r$lib"
        done
    done
    # Scriptlets send systemctl's chatter to /dev/null, as on any host.
    mkdir -p "$r/dev"
    mknod -m 0666 "$r/dev/null" c 1 3
    # systemctl as the scriptlets find it on a systemd host, minus systemd:
    # it notes what it was asked.
    printf '#!/bin/sh\necho "$*" >>/systemctl.log\n' >"$r/usr/bin/systemctl"
    chmod +x "$r/usr/bin/systemctl"
    rpm --root "$r" --initdb
}
systemctl_log() { cat "$R/systemctl.log" 2>/dev/null || true; }
r_rpm() {
    rpm --root "$R" --nodeps "$@" 2>"$work/rpm.err" || { cat "$work/rpm.err" >&2; return 1; }
    # rpm reports a failed scriptlet on stderr without failing the
    # transaction. Debian's rpm adds a two-line note on every install.
    if grep -qi 'scriptlet\|error' "$work/rpm.err"; then
        cat "$work/rpm.err" >&2
        return 1
    fi
    grep -v '^rpm: ' "$work/rpm.err" | sed 's/^/rpm-cycle:   rpm says: /' || true
}

s() { echo "$R/etc/xen/scripts/$1"; }
check_ours_in_place() {
    local what=$1 expect_stock=$2 v
    [ "$(readlink "$(s block)")" = /usr/sbin/xen-block-hotplug ] ||
        fail "$what: block is $(ls -l "$(s block)" 2>&1)"
    v=$(chroot "$R" /etc/xen/scripts/block --version) || fail "$what: block --version failed"
    [[ $v == "xen-block-hotplug "* ]] || fail "$what: block --version says '$v'"
    cmp -s "$(s block.xen-stock)" "$expect_stock" || fail "$what: block.xen-stock is not the stock script"
    check_no_leftovers "$what"
    echo "rpm-cycle: $flavour: $what: ok ($v; stock at block.xen-stock)"
}
check_no_leftovers() {
    local f
    for f in block.rpmnew block.rpmsave block.rpmorig; do
        [ ! -e "$(s $f)" ] && [ ! -L "$(s $f)" ] || fail "$1: $f left over"
    done
}

cp "$stock" "$work/stock-1"
printf '# stand-in 1\n' >>"$work/stock-1"
printf '#!/bin/sh\n# site SAN wrapper\nexec /usr/local/sbin/san-block "$@"\n' >"$work/site-block"
sed 's/write_dev/vendor_write_node/g' "$stock" >"$work/vendor-block"

for flavour in "xen-runtime:%config(noreplace)" "xen:%config" "xen-tools:"; do
    name=${flavour%%:*}
    attr=${flavour#*:}
    s1=$(standin "$name" 1 "$attr" "$work/stock-1")
    s2=$(standin "$name" 2 "$attr" "$stock")

    # A. Xen first.
    R="$work/root-$name-a"
    new_root "$R"
    r_rpm -i "$s1"
    cmp -s "$(s block)" "$work/stock-1" || fail "the stand-in did not install the stock script"
    r_rpm -i "$ours"
    check_ours_in_place "install" "$work/stock-1"
    # The timer: installed, enabled only as a preset says (%%systemd_post).
    for f in usr/lib/systemd/system/xen-block-hotplug-cleanup.service \
        usr/lib/systemd/system/xen-block-hotplug-cleanup.timer etc/cron.d/xen-block-hotplug; do
        [ -f "$R/$f" ] || fail "install: /$f missing"
    done
    [ "$(systemctl_log)" = "--no-reload preset xen-block-hotplug-cleanup.timer" ] ||
        fail "install: systemctl was asked '$(systemctl_log)', not to preset the timer"
    r_rpm -U "$ours_99"
    check_ours_in_place "upgrade to release 99" "$work/stock-1"
    [ "$(systemctl_log | grep -c .)" = 1 ] || fail "upgrade: systemctl was asked again: $(systemctl_log)"
    r_rpm -U "$s2"
    check_ours_in_place "update of $name" "$stock"
    r_rpm -e xen-block-hotplug
    [ -f "$(s block)" ] && [ ! -L "$(s block)" ] || fail "erase: block is $(ls -l "$(s block)" 2>&1)"
    cmp -s "$(s block)" "$stock" || fail "erase: block is not the stock script byte for byte"
    [ -x "$(s block)" ] || fail "erase: block lost its execute bit"
    [ ! -e "$(s block.xen-stock)" ] || fail "erase: block.xen-stock left over"
    check_no_leftovers "erase"
    systemctl_log | grep -qx -- "--no-reload disable --now xen-block-hotplug-cleanup.timer" ||
        fail "erase: the timer was not disabled: $(systemctl_log)"
    for f in usr/lib/systemd/system/xen-block-hotplug-cleanup.timer etc/cron.d/xen-block-hotplug; do
        [ ! -e "$R/$f" ] || fail "erase: /$f left"
    done
    echo "rpm-cycle: $flavour: erase: ok (stock script back byte for byte; timer disabled, units and cron gone)"

    # C. A foreign block: the vendor's variant (the stand-in's), then a
    # site's own script that no package owns.
    for foreign in vendor site; do
        R="$work/root-$name-c-$foreign"
        new_root "$R"
        if [ $foreign = vendor ]; then
            r_rpm -i "$(standin "$name" 3 "$attr" "$work/vendor-block")"
        else
            mkdir -p "$R/etc/xen/scripts"
            install -m 0755 "$work/site-block" "$(s block)"
        fi
        r_rpm -i "$ours"
        cmp -s "$(s block)" "$work/$foreign-block" || fail "$foreign: block changed by the install"
        [ ! -L "$(s block)" ] || fail "$foreign: block became a link"
        [ ! -e "$(s block.xen-stock)" ] || fail "$foreign: block.xen-stock appeared"
        chroot "$R" /usr/sbin/xen-block-hotplug --version >/dev/null || fail "$foreign: the binary is not installed"
        grep -qF "xen-block-hotplug: /etc/xen/scripts/block is a file that is not Xen's stock script" "$work/rpm.err" ||
            fail "$foreign: the install did not say what it found: $(cat "$work/rpm.err")"
        grep -qF "ln -s /usr/sbin/xen-block-hotplug /etc/xen/scripts/block" "$work/rpm.err" ||
            fail "$foreign: the install did not say how to switch"
        told=$(grep -c "is a file that is not Xen's stock script" "$work/rpm.err" || true)
        [ "$told" = 1 ] || fail "$foreign: the install said it $told times"
        [ ! -e "$R/var/lib/rpm-state/xen-block-hotplug" ] || fail "$foreign: rpm-state left behind"
        r_rpm -e xen-block-hotplug
        cmp -s "$(s block)" "$work/$foreign-block" || fail "$foreign: block changed by the erase"
        check_no_leftovers "$foreign: erase"
        echo "rpm-cycle: $flavour: a $foreign's own block: left byte for byte by install and erase, binary installed, admin told"
    done

    # B. Ours first.
    R="$work/root-$name-b"
    new_root "$R"
    r_rpm -i "$ours"
    [ ! -e "$R/etc/xen" ] || fail "install without Xen created $(ls -R "$R/etc/xen")"
    r_rpm -i "$s2"
    check_ours_in_place "install of $name after ours" "$stock"
    r_rpm -e "$name"
    [ ! -e "$(s block.xen-stock)" ] || fail "erase of $name: block.xen-stock left over"
    check_no_leftovers "erase of $name"
    r_rpm -e xen-block-hotplug
    [ ! -e "$(s block)" ] && [ ! -L "$(s block)" ] || fail "erase of both: block left: $(ls -l "$(s block)")"
    echo "rpm-cycle: $flavour: ours first, then $name, erase both: ok"
done
echo "rpm-cycle: PASS"
