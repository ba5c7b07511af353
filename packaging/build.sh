#!/bin/bash
# Builds the packages into target/packages/:
#   xen-block-hotplug_VERSION_amd64.deb   (Debian, Ubuntu)
#   xen-block-hotplug-VERSION-1.x86_64.rpm (Oracle VM / OL, RHEL, Fedora, openSUSE)
# from one static binary (musl, or glibc with crt-static where the musl
# target is not available: either runs on any x86-64 dom0 whatever its
# userland), the man page and the bash/zsh/fish completions written from
# the clap definitions, the cleanup timer's units (packaging/systemd), the
# cron fallback (packaging/cron) and the maintainer scripts with the
# stock-script recogniser (packaging/stock-block.sh) pasted in.
#
# Needs cargo, gcc, dpkg-deb, and rpmbuild (Debian package `rpm`).
# Environment: PKG_RELEASE (default 1) is the Debian revision and RPM
# release; the tests set it to build an upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
triple=x86_64-unknown-linux-gnu
release="${PKG_RELEASE:-1}"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
out="$root/target/packages"
# Who the packages name as maintainer (Debian's Maintainer, RPM's Packager
# and both changelogs). The project has no public domain or list yet: the
# reserved .invalid domain (RFC 2606) can never deliver to a stranger who
# registers a look-alike name, and is a well-formed address for lintian.
# Change it here when the project has a list.
maintainer="xen-block-hotplug maintainers <maintainers@xen-block-hotplug.invalid>"
# The changelogs' date: the commit's, so that a rebuild is the same package.
when=$(git log -1 --format=%ct 2>/dev/null || date +%s)
when=${SOURCE_DATE_EPOCH:-$when}
work="$out/work"

for tool in dpkg-deb rpmbuild file gzip; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is missing (apt-get install dpkg-dev rpm file)" >&2
        exit 1
    }
done

# 1. The static binary: musl where the toolchain has (or can add) the target,
#    as its start-up is cheapest (no dynamic loader, no glibc CPU probing:
#    see docs/performance.md); else glibc with crt-static, only for the
#    explicit --target (applied to host builds it would break the proc-macro
#    crates, clap_derive).
musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    rustup target add "$musl" >/dev/null 2>&1; then
    triple=$musl
    cargo build --release --locked --target "$triple" --bin xen-block-hotplug
else
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple" --bin xen-block-hotplug
fi
bin="$CARGO_TARGET_DIR/$triple/release/xen-block-hotplug"
if ! file -L "$bin" | grep -Eq 'statically linked|static-pie linked'; then
    echo "build.sh: $bin is not static: $(file -L "$bin")" >&2
    exit 1
fi

# 2. The man page and the bash, zsh and fish completions, from examples so
#    clap_mangen and clap_complete stay out of the binary.
rm -rf "$work"
mkdir -p "$work/man" "$work/completions"
cargo run --quiet --locked --example manpage -- "$work/man" >/dev/null
gzip -9n <"$work/man/xen-block-hotplug.8" >"$work/man/xen-block-hotplug.8.gz"
cargo run --quiet --locked --example completions -- "$work/completions" >/dev/null

# 3. The .deb, with dpkg-deb over a staged tree.
deb="$work/deb"
install -D -m 0755 "$bin" "$deb/usr/sbin/xen-block-hotplug"
# No /etc/xen/scripts/block in the package: the postinst links it where the
# preinst diverted Xen's stock script, and only there.
install -D -m 0644 "$work/man/xen-block-hotplug.8.gz" "$deb/usr/share/man/man8/xen-block-hotplug.8.gz"
# Where each shell's loader looks on Debian (zsh: vendor-completions).
install -D -m 0644 "$work/completions/xen-block-hotplug.bash" \
    "$deb/usr/share/bash-completion/completions/xen-block-hotplug"
install -D -m 0644 "$work/completions/_xen-block-hotplug" \
    "$deb/usr/share/zsh/vendor-completions/_xen-block-hotplug"
install -D -m 0644 "$work/completions/xen-block-hotplug.fish" \
    "$deb/usr/share/fish/vendor_completions.d/xen-block-hotplug.fish"
# Not under a rules.d: see the rule file's header.
install -D -m 0644 udev-rules/65-xen-block-hotplug.rules \
    "$deb/usr/share/xen-block-hotplug/udev/65-xen-block-hotplug.rules"
# The cleanup timer (enabled by the postinst, as Debian does) and the cron
# fallback for hosts without systemd.
for u in xen-block-hotplug-cleanup.service xen-block-hotplug-cleanup.timer; do
    install -D -m 0644 "packaging/systemd/$u" "$deb/usr/lib/systemd/system/$u"
done
install -D -m 0644 packaging/cron/xen-block-hotplug "$deb/etc/cron.d/xen-block-hotplug"
mkdir -p "$deb/usr/share/doc/xen-block-hotplug"
gzip -9n <README.md >"$deb/usr/share/doc/xen-block-hotplug/README.md.gz"
install -m 0644 packaging/deb/copyright "$deb/usr/share/doc/xen-block-hotplug/copyright"
cat >"$work/changelog.Debian" <<EOF
xen-block-hotplug ($version-$release) unstable; urgency=medium

  * Release $version, packaged by packaging/build.sh; the changes are in
    the project's history and README.md.

 -- $maintainer  $(LC_ALL=C date -u -R -d "@$when")
EOF
gzip -9n <"$work/changelog.Debian" >"$deb/usr/share/doc/xen-block-hotplug/changelog.Debian.gz"
# What lintian says that is deliberate, each with its reason.
install -D -m 0644 packaging/deb/lintian-overrides "$deb/usr/share/lintian/overrides/xen-block-hotplug"
mkdir -p "$deb/DEBIAN"
# The maintainer scripts, with the stock-script recogniser shared with the
# .rpm pasted in (the preinst runs before any file of ours is unpacked).
with_functions() { # SCRIPT OUT: SCRIPT with packaging/stock-block.sh pasted in
    sed -e '/^#@STOCK_BLOCK_FUNCTIONS@$/{r packaging/stock-block.sh' -e 'd}' "$1" >"$2"
}
for f in preinst postinst prerm postrm; do
    with_functions "packaging/deb/$f" "$deb/DEBIAN/$f"
    chmod 0755 "$deb/DEBIAN/$f"
done
echo /etc/cron.d/xen-block-hotplug >"$deb/DEBIAN/conffiles"
size_kb=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
sed -e "s/@VERSION@/$version-$release/" -e "s/@SIZE@/$size_kb/" -e "s|@MAINTAINER@|$maintainer|" \
    packaging/deb/control >"$deb/DEBIAN/control"
(cd "$deb" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' |
    LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
deb_file="$out/xen-block-hotplug_${version}-${release}_amd64.deb"
rm -f "$deb_file"
dpkg-deb --root-owner-group -Zxz --build "$deb" "$deb_file" >/dev/null

# 4. The .rpm, from the same files; rpmbuild only copies them.
rpm_top="$work/rpmbuild"
mkdir -p "$rpm_top/SOURCES"
cp "$bin" "$rpm_top/SOURCES/xen-block-hotplug"
cp "$work/man/xen-block-hotplug.8.gz" README.md udev-rules/65-xen-block-hotplug.rules \
    "$work/completions/"* packaging/systemd/* "$rpm_top/SOURCES/"
cp packaging/cron/xen-block-hotplug "$rpm_top/SOURCES/xen-block-hotplug.cron"
# The spec as rpmbuild reads it (tests/packaging/rpm-cycle.sh rebuilds
# from it and SOURCES).
with_functions packaging/rpm/xen-block-hotplug.spec "$work/spec.in"
sed -e "s|@MAINTAINER@|$maintainer|" "$work/spec.in" >"$work/xen-block-hotplug.spec"
cat >>"$work/xen-block-hotplug.spec" <<EOF

%changelog
* $(LC_ALL=C date -u -d "@$when" '+%a %b %d %Y') $maintainer - $version-$release
- Release $version, packaged by packaging/build.sh; the changes are in the
  project's history and README.md.
EOF
rpmbuild --quiet -bb --target x86_64 \
    --define "_topdir $rpm_top" \
    --define "pkg_version $version" \
    --define "pkg_release $release" \
    "$work/xen-block-hotplug.spec" >/dev/null
rpm_file="$out/xen-block-hotplug-${version}-${release}.x86_64.rpm"
cp "$rpm_top/RPMS/x86_64/xen-block-hotplug-${version}-${release}.x86_64.rpm" "$rpm_file"

echo "binary: $bin ($(stat -c %s "$bin") bytes; $(file -L "$bin" | cut -d, -f2,4 | sed 's/^ //'))"
for f in "$deb_file" "$rpm_file"; do
    echo "package: $f ($(stat -c %s "$f") bytes)"
done
