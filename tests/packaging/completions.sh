#!/bin/bash
# The shell completions both packages carry: the bash one loads the way
# bash-completion loads it (sourced, then `complete -p` names the function)
# and completes subcommands and options; the zsh and fish ones are where
# each distribution's loader looks, and parse where those shells exist.
#
# Usage: tests/packaging/completions.sh [DEB RPM]
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
    echo "completions: FAIL: $*" >&2
    exit 1
}
deb="${1:-$(ls -t target/packages/xen-block-hotplug_*_amd64.deb 2>/dev/null | head -n1 || true)}"
rpm_file="${2:-$(ls -t target/packages/xen-block-hotplug-*.x86_64.rpm 2>/dev/null | head -n1 || true)}"
[ -f "$deb" ] && [ -f "$rpm_file" ] || fail "no packages: run packaging/build.sh"

work=$(mktemp -d /tmp/completions.XXXXXX)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/deb"
rpm_abs=$(realpath "$rpm_file")
(mkdir -p "$work/rpm" && cd "$work/rpm" && rpm2cpio "$rpm_abs" | cpio -idm --quiet)

# What bash offers after `xen-block-hotplug WORDS...` (the last word being
# completed), with the completion file sourced in a clean shell.
complete_words() {
    local file=$1
    shift
    bash --norc --noprofile -c '
        file=$1; shift
        source "$file" || exit 3
        spec=$(complete -p xen-block-hotplug) || exit 4
        fn=$(sed -n "s/.* -F \([^ ]*\) .*/\1/p" <<<"$spec")
        [ -n "$fn" ] || exit 5
        COMP_WORDS=(xen-block-hotplug "$@")
        COMP_CWORD=$#
        COMP_LINE="${COMP_WORDS[*]}"
        COMP_POINT=${#COMP_LINE}
        "$fn" xen-block-hotplug "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf "%s\n" "${COMPREPLY[@]}"
    ' complete_words "$file" "$@"
}

for kind in deb rpm; do
    bash_file="$work/$kind/usr/share/bash-completion/completions/xen-block-hotplug"
    [ -f "$bash_file" ] || fail "$kind: no bash completion at ${bash_file#"$work/$kind"}"
    got=$(complete_words "$bash_file" diag) || fail "$kind: the bash completion did not load ($?)"
    [ "$got" = diagnose ] || fail "$kind: 'xen-block-hotplug diag<TAB>' offers '$got', not diagnose"
    got=$(complete_words "$bash_file" cl)
    grep -qx cleanup <<<"$got" || fail "$kind: 'cl<TAB>' offers '$got'"
    got=$(complete_words "$bash_file" cleanup --dry)
    grep -qx -- --dry-run <<<"$got" || fail "$kind: 'cleanup --dry<TAB>' offers '$got'"

    case $kind in
    deb) zsh_file=usr/share/zsh/vendor-completions/_xen-block-hotplug ;;
    rpm) zsh_file=usr/share/zsh/site-functions/_xen-block-hotplug ;;
    esac
    fish_file=usr/share/fish/vendor_completions.d/xen-block-hotplug.fish
    grep -q '^#compdef xen-block-hotplug' "$work/$kind/$zsh_file" || fail "$kind: no zsh completion at /$zsh_file"
    grep -q '^complete -c xen-block-hotplug' "$work/$kind/$fish_file" || fail "$kind: no fish completion at /$fish_file"
    if command -v zsh >/dev/null; then
        zsh -n "$work/$kind/$zsh_file" || fail "$kind: the zsh completion does not parse"
    fi
    if command -v fish >/dev/null; then
        fish --no-execute "$work/$kind/$fish_file" || fail "$kind: the fish completion does not parse"
    fi
    echo "completions: $kind: bash completes diag -> diagnose, cl -> cleanup, --dry -> --dry-run; zsh and fish in place"
done
echo "completions: PASS"
