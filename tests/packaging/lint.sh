#!/bin/bash
# What the packagers' own checkers say: lintian on the .deb and rpmlint on
# the .rpm must report nothing but what packaging/deb/lintian-overrides
# (shipped in the package) and packaging/rpm/rpmlint.toml accept, each with
# its reason. Errors and warnings fail; lintian's informational tags are
# printed, not failed on.
#
# Usage: tests/packaging/lint.sh [DEB RPM]. Needs lintian and rpmlint
# (tests/packaging/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
    echo "lint: FAIL: $*" >&2
    exit 1
}
deb="${1:-$(ls -t target/packages/xen-block-hotplug_*_amd64.deb 2>/dev/null | head -n1 || true)}"
rpm_file="${2:-$(ls -t target/packages/xen-block-hotplug-*.x86_64.rpm 2>/dev/null | head -n1 || true)}"
[ -f "$deb" ] && [ -f "$rpm_file" ] || fail "no packages: run packaging/build.sh"
for tool in lintian rpmlint; do
    command -v $tool >/dev/null || fail "needs $tool (apt-get install lintian rpmlint)"
done

# lintian refuses nothing as root but says so on stderr; its verdict is the
# exit status with --fail-on and the E:/W: lines.
out=$(lintian -I --fail-on error,warning "$deb" 2>/dev/null) || {
    echo "$out" >&2
    fail "lintian: $(basename "$deb")"
}
! grep -Eq '^[EW]: ' <<<"$out" || fail "lintian: $out"
echo "lint: lintian: no error or warning beyond the overrides ($(grep -c '^I: ' <<<"$out" || true) informational tags)"

out=$(rpmlint -c packaging/rpm/rpmlint.toml "$rpm_file" 2>&1) || {
    echo "$out" >&2
    fail "rpmlint: $(basename "$rpm_file")"
}
! grep -Eq ': [EW]: ' <<<"$out" || fail "rpmlint: $out"
echo "lint: rpmlint: $(grep -o '[0-9]* errors, [0-9]* warnings' <<<"$out")"
echo "lint: PASS"
