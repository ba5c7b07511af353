#!/bin/sh
# Builds and installs the binary README's "Installing by hand" means: the
# static musl build. Its start-up is the cheapest (no dynamic loader, no
# glibc CPU probing, which traps under virtualisation): an add+remove
# cycle took 35 % longer with `cargo build --release`'s glibc binary
# (issue 13). Where the musl target cannot be had (no rustup, offline),
# it builds glibc with crt-static instead, as packaging/build.sh does, and
# says so.
#
#   packaging/install-from-source.sh [DEST]   (default /usr/sbin/xen-block-hotplug)
#
# Only the binary is installed; pointing /etc/xen/scripts/block at it is
# README's next step.
set -eu
cd "$(dirname "$0")/.."
dest=${1:-/usr/sbin/xen-block-hotplug}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
arch=$(uname -m)
musl=$arch-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    rustup target add "$musl" >/dev/null 2>&1; then
    triple=$musl
    cargo build --release --locked --target "$triple" --bin xen-block-hotplug
else
    triple=$arch-unknown-linux-gnu
    echo "install-from-source: the $musl target is not available" \
        "(\`rustup target add $musl\` failed, or there is no rustup): building" \
        "the glibc binary instead; it does the same work but starts slower." \
        "Add the target and run this again for the fast one." >&2
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple" --bin xen-block-hotplug
fi
install -D -m 0755 "$CARGO_TARGET_DIR/$triple/release/xen-block-hotplug" "$dest"
echo "install-from-source: installed $dest ($triple)"
