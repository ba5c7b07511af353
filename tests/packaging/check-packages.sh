#!/bin/bash
# Static checks of what packaging/build.sh made, with dpkg-deb and rpm only
# (no root, nothing installed):
# - both packages carry the binary, static, and the man page, and not the
#   xenstore-sim debugging tool;
# - the .deb puts /etc/xen/scripts/block -> /usr/sbin/xen-block-hotplug and
#   diverts the stock script in its preinst; the .rpm leaves the path to the
#   Xen tools package and swaps it in its scriptlets and triggers;
# - the udev decision: neither package activates a udev rule, so on a vbd
#   uevent exactly one hotplug program runs, whether the host has Xen's
#   xen-backend.rules (it runs /etc/xen/scripts/block, i.e. ours) or not
#   (no rule: the toolstack runs the script itself).
#
# Usage: tests/packaging/check-packages.sh [DEB RPM]
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
    echo "check-packages: FAIL: $*" >&2
    exit 1
}
deb="${1:-$(ls -t target/packages/xen-block-hotplug_*_amd64.deb 2>/dev/null | head -n1 || true)}"
rpm_file="${2:-$(ls -t target/packages/xen-block-hotplug-*.x86_64.rpm 2>/dev/null | head -n1 || true)}"
[ -f "$deb" ] && [ -f "$rpm_file" ] || fail "no packages: run packaging/build.sh"
command -v rpm >/dev/null || fail "needs rpm (apt-get install rpm)"

work=$(mktemp -d /tmp/check-packages.XXXXXX)
trap 'rm -rf "$work"' EXIT

deb_list=$(dpkg-deb -c "$deb" | awk '{ $1=$2=$3=$4=$5=""; sub(/^ +/, ""); print }' | sed 's|^\./|/|')
rpm_list=$(rpm -qpl "$rpm_file" 2>/dev/null)
rpm_scripts=$(rpm -qp --scripts --triggers "$rpm_file" 2>/dev/null)

for pair in "deb:$deb_list" "rpm:$rpm_list"; do
    kind=${pair%%:*}
    list=${pair#*:}
    for want in /usr/sbin/xen-block-hotplug /usr/share/man/man8/xen-block-hotplug.8.gz \
        /usr/share/xen-block-hotplug/udev/65-xen-block-hotplug.rules \
        /usr/lib/systemd/system/xen-block-hotplug-cleanup.service \
        /usr/lib/systemd/system/xen-block-hotplug-cleanup.timer \
        /etc/cron.d/xen-block-hotplug; do
        grep -q "^$want\$" <<<"$list" || fail "$kind: $want missing"
    done
    ! grep -q xenstore-sim <<<"$list" || fail "$kind: carries xenstore-sim"
    # The udev decision: no rule file where udev would read it.
    ! grep -Eq '/udev/rules\.d/' <<<"$list" || fail "$kind: installs an active udev rule"
done

# The binaries inside are static.
dpkg-deb -x "$deb" "$work/deb"
rpm_abs=$(realpath "$rpm_file")
(mkdir -p "$work/rpm" && cd "$work/rpm" && rpm2cpio "$rpm_abs" | cpio -idm --quiet)
for b in "$work/deb/usr/sbin/xen-block-hotplug" "$work/rpm/usr/sbin/xen-block-hotplug"; do
    file "$b" | grep -Eq 'statically linked|static-pie linked' || fail "not static: $(file "$b")"
    "$b" --version | grep -q '^xen-block-hotplug ' || fail "$b --version"
done
cmp -s "$work/deb/usr/sbin/xen-block-hotplug" "$work/rpm/usr/sbin/xen-block-hotplug" ||
    fail "the .deb and the .rpm carry different binaries"
# --version names the build (build.rs): this checkout's commit, the target,
# and static linking.
v=$("$work/deb/usr/sbin/xen-block-hotplug" --version)
if head=$(git rev-parse --short HEAD 2>/dev/null); then
    grep -Eq "^xen-block-hotplug [^ ]+ \(commit $head(-dirty)?, x86_64-unknown-linux-(musl|gnu), static\)\$" <<<"$v" ||
        fail "--version says '$v', not commit $head, x86_64 static"
fi

# .deb: the diversion in and out, and the link made by the postinst (not
# shipped: dpkg would lay it over a foreign script); both formats' scripts
# carry the recogniser.
[ ! -e "$work/deb/etc/xen/scripts/block" ] && [ ! -L "$work/deb/etc/xen/scripts/block" ] ||
    fail "deb: ships /etc/xen/scripts/block"
dpkg-deb -e "$deb" "$work/deb-ctl"
grep -q -- '--divert "$stock" --add "$script"' "$work/deb-ctl/preinst" || fail "deb: preinst does not divert"
grep -q -- '--remove /etc/xen/scripts/block' "$work/deb-ctl/postrm" || fail "deb: postrm does not give the script back"
grep -q 'ln -s /usr/sbin/xen-block-hotplug "$script"' "$work/deb-ctl/postinst" || fail "deb: postinst does not link"
grep -q '^xbh_block_kind()' "$work/deb-ctl/preinst" || fail "deb: preinst lacks the recogniser"
[ "$(rpm -qp --scripts --triggers "$rpm_file" 2>/dev/null | grep -c '^xbh_block_kind()')" = 2 ] ||
    fail "rpm: %post and %triggerin do not both carry the recogniser"

# The cleanup timer: the units parse and load (systemd-analyze verify,
# against this host's own units for the targets they name), and the
# cron fallback is a conffile in both packages.
grep -qx /etc/cron.d/xen-block-hotplug "$work/deb-ctl/conffiles" || fail "deb: the cron file is not a conffile"
[ "$(rpm -qp --configfiles "$rpm_file" 2>/dev/null)" = /etc/cron.d/xen-block-hotplug ] ||
    fail "rpm: config files are '$(rpm -qp --configfiles "$rpm_file" 2>/dev/null)'"
cmp -s "$work/deb/etc/cron.d/xen-block-hotplug" "$work/rpm/etc/cron.d/xen-block-hotplug" || fail "the cron files differ"
for u in xen-block-hotplug-cleanup.service xen-block-hotplug-cleanup.timer; do
    cmp -s "$work/deb/usr/lib/systemd/system/$u" "$work/rpm/usr/lib/systemd/system/$u" || fail "$u differs"
done
if command -v systemd-analyze >/dev/null && [ -d /usr/lib/systemd/system ]; then
    mkdir -p "$work/units/usr/lib/systemd" "$work/units/usr/sbin"
    cp -a /usr/lib/systemd/system "$work/units/usr/lib/systemd/"
    cp "$work/deb/usr/lib/systemd/system/"xen-block-hotplug-cleanup.* "$work/units/usr/lib/systemd/system/"
    cp "$work/deb/usr/sbin/xen-block-hotplug" "$work/units/usr/sbin/"
    verify=$(systemd-analyze verify --man=no --root="$work/units" \
        xen-block-hotplug-cleanup.timer xen-block-hotplug-cleanup.service 2>&1) ||
        fail "systemd-analyze verify: $verify"
    [ -z "$verify" ] || fail "systemd-analyze verify says: $verify"
    exposure=$(systemd-analyze security --offline=yes \
        "$work/deb/usr/lib/systemd/system/xen-block-hotplug-cleanup.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: //p')
    echo "check-packages: units verify; the service's exposure: ${exposure:-unknown}"
fi
# The cron line runs cleanup only where systemd is not running: played with
# the marker directory and the binary replaced by test paths.
cron_cmd=$(grep -v '^#' "$work/deb/etc/cron.d/xen-block-hotplug" | grep ' root ' | sed 's/^\([^ ]* \)\{5\}root //')
[ -n "$cron_cmd" ] || fail "cron: no line run as root"
printf '#!/bin/sh\necho "$*" >>%s\n' "$work/cron-ran" >"$work/fake-xbh"
chmod +x "$work/fake-xbh"
cron_run() { # systemd running (yes/no): what the fake binary was run with
    rm -rf "$work/run-systemd" "$work/cron-ran"
    [ "$1" = yes ] && mkdir -p "$work/run-systemd"
    sh -c "$(sed -e "s|/run/systemd/system|$work/run-systemd|g" \
        -e "s|/usr/sbin/xen-block-hotplug|$work/fake-xbh|g" <<<"$cron_cmd")" || true
    cat "$work/cron-ran" 2>/dev/null || true
}
[ "$(cron_run no)" = cleanup ] || fail "cron: without systemd the line runs '$(cron_run no)', not cleanup"
[ -z "$(cron_run yes)" ] || fail "cron: with systemd the line still runs '$(cron_run yes)'"

# .rpm: not the owner of the path; the scriptlets and triggers are there.
! grep -q '^/etc/xen' <<<"$rpm_list" || fail "rpm: lists a file under /etc/xen (the Xen tools package owns it)"
for want in 'postinstall scriptlet' 'postuninstall scriptlet' \
    'triggerin scriptlet (using /bin/sh) -- xen, xen-runtime, xen-tools' \
    'triggerpostun scriptlet (using /bin/sh) -- xen, xen-runtime, xen-tools' \
    'mv -f "$s/block" "$s/block.xen-stock"' 'mv -f "$s/block.xen-stock" "$s/block"' \
    'preuninstall scriptlet' 'systemctl --no-reload preset xen-block-hotplug-cleanup.timer' \
    'systemctl --no-reload disable --now xen-block-hotplug-cleanup.timer'; do
    grep -qF -- "$want" <<<"$rpm_scripts" || fail "rpm: scripts lack: $want"
done
# rpm 4.8 (Oracle VM 3.4's dom0) reads gzip payloads, not zstd.
[ "$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpm_file" 2>/dev/null)" = gzip ] || fail "rpm: payload is not gzip"

# The udev decision, played out: count the hotplug programs that the active
# rules run for a vbd add, on a host with Xen's rule (here, upstream Xen's
# line for vbd) and on one without, after installing our package.
rule_file=udev-rules/65-xen-block-hotplug.rules
rules=$(grep -v '^[[:space:]]*#' "$rule_file" | grep -c . || true)
[ "$rules" = 1 ] || fail "$rule_file: $rules rules, expected 1"
grep -v '^#' "$rule_file" | grep -q 'SUBSYSTEM=="xen-backend", KERNEL=="vbd\*", ACTION=="add|remove",.*RUN+="/usr/sbin/xen-block-hotplug $env{ACTION}"' ||
    fail "$rule_file: not the vbd add/remove rule running /usr/sbin/xen-block-hotplug"
xen_rule='SUBSYSTEM=="xen-backend", KERNEL=="vbd*", RUN+="/etc/xen/scripts/block $env{ACTION}"'
runs_for_vbd() { # the RUN+= programs of rule lines matching a vbd uevent
    grep -v '^[[:space:]]*#' | grep 'SUBSYSTEM=="xen-backend"' | grep 'KERNEL=="vbd\*"' |
        grep -o 'RUN+="[^ "]*' | sed 's/RUN+="//'
}
active_ours=$(grep -E '/udev/rules\.d/' <<<"$deb_list$rpm_list" || true) # none, checked above
for host in with-xen-rules without; do
    rules_text=""
    [ $host = with-xen-rules ] && rules_text="$xen_rule"
    for f in $active_ours; do rules_text+=$'\n'$(cat "$work/deb$f"); done
    n=$(runs_for_vbd <<<"$rules_text" | grep -c . || true)
    want=0
    [ $host = with-xen-rules ] && want=1
    [ "$n" = $want ] || fail "udev, host $host: $n hotplug programs per vbd uevent, expected $want"
done
echo "check-packages: PASS ($(basename "$deb"): $(stat -c %s "$deb") bytes; $(basename "$rpm_file"): $(stat -c %s "$rpm_file") bytes)"
