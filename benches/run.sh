#!/bin/sh
# The benchmark in one command: our binary as we ship it (static, musl: no
# dynamic loader, no glibc start-up CPU probing) against Debian's stock
# script. Falls back to the glibc build when the musl target is unavailable.
# Arguments go to the bench (--smoke: one iteration each, as CI runs it).
set -eu
cd "$(dirname "$0")/.."
tests/prepare.sh
target=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    rustup target add "$target" >/dev/null 2>&1; then
    cargo build --release --target "$target" --bin xen-block-hotplug
    XBH_BIN="${CARGO_TARGET_DIR:-$PWD/target}/$target/release/xen-block-hotplug"
    export XBH_BIN
else
    echo "bench: no $target target; measuring the glibc build" >&2
fi
exec cargo bench --bench hotplug -- "$@"
