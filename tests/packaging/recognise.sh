#!/bin/bash
# packaging/stock-block.sh's recogniser, as a table: what is at
# /etc/xen/scripts/block decides whether the packages replace it. Run under
# dash (Debian's /bin/sh) and bash (OL6's and RPM distributions' /bin/sh).
#
# Usage: tests/packaging/recognise.sh. Needs tests/prepare.sh's target/stock.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
stock="$root/target/stock/etc/xen/scripts/block"
fail() {
    echo "recognise: FAIL: $*" >&2
    exit 1
}
[ -f "$stock" ] || fail "$stock missing: run tests/prepare.sh"
work=$(mktemp -d /tmp/recognise.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The cases: NAME, then how to make it at $work/NAME.
make_case() {
    local name=$1 p="$work/$1"
    case $name in
    debian-stock) cp "$stock" "$p" ;;
    # Xen 3.4 to 4.19 differ in detail, not in these traits; a site's
    # comment or log line does not make the script foreign.
    stock-with-a-site-comment) { cat "$stock"; echo '# site: logged by puppet'; } >"$p" ;;
    stock-with-sh-shebang) { echo '#!/bin/sh'; tail -n +2 "$stock"; } >"$p" ;;
    site-wrapper) printf '#!/bin/sh\n# our SAN wrapper\nexec /usr/local/sbin/san-block "$@"\n' >"$p" ;;
    vendor-variant-without-write-dev) sed 's/write_dev/vendor_write_node/g' "$stock" >"$p" ;;
    without-block-common) sed '/block-common\.sh/d' "$stock" >"$p" ;;
    python-script) { echo '#!/usr/bin/python3'; tail -n +2 "$stock"; } >"$p" ;;
    empty-file) : >"$p" ;;
    directory) mkdir "$p" ;;
    link-to-ours) ln -s /usr/sbin/xen-block-hotplug "$p" ;;
    link-elsewhere) ln -s /usr/local/sbin/san-block "$p" ;;
    link-to-the-stock-script) ln -s "$stock" "$p" ;;
    absent) ;;
    esac
}
expect() {
    case $1 in
    debian-stock | stock-with-a-site-comment | stock-with-sh-shebang) echo stock ;;
    link-to-ours) echo ours ;;
    absent) echo absent ;;
    *) echo foreign ;;
    esac
}
cases="debian-stock stock-with-a-site-comment stock-with-sh-shebang site-wrapper
    vendor-variant-without-write-dev without-block-common python-script empty-file
    directory link-to-ours link-elsewhere link-to-the-stock-script absent"
for c in $cases; do make_case "$c"; done

n=0
for shell in dash bash; do
    command -v $shell >/dev/null || continue
    for c in $cases; do
        got=$($shell -c '. "$1"; xbh_block_kind "$2"' sh packaging/stock-block.sh "$work/$c")
        [ "$got" = "$(expect "$c")" ] || fail "$shell: $c is '$got', expected '$(expect "$c")'"
        n=$((n + 1))
    done
    # The notice names what was found and the way to switch by hand.
    msg=$($shell -c '. "$1"; xbh_foreign_notice "$2"' sh packaging/stock-block.sh "$work/site-wrapper" 2>&1)
    grep -qF "first line: #!/bin/sh" <<<"$msg" || fail "$shell: the notice does not say what was found: $msg"
    grep -qF "ln -s /usr/sbin/xen-block-hotplug $work/site-wrapper" <<<"$msg" || fail "$shell: no way to switch: $msg"
done
echo "recognise: PASS ($n cases)"
