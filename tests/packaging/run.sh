#!/bin/bash
# What CI runs for the packages: install the packaging tools if missing,
# build the packages, check their contents, lint them (lintian, rpmlint),
# check the stock-script recogniser and the completions, run the .rpm's
# scriptlets in a throwaway root and the .deb's install/upgrade/remove
# cycle on this host (which deb-cycle.sh leaves as it found it).
set -euo pipefail
cd "$(dirname "$0")/../.."
need=""
command -v rpmbuild >/dev/null 2>&1 || need="$need rpm"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v file >/dev/null 2>&1 || need="$need file"
command -v dpkg-deb >/dev/null 2>&1 || need="$need dpkg"
command -v lintian >/dev/null 2>&1 || need="$need lintian"
command -v rpmlint >/dev/null 2>&1 || need="$need rpmlint"
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
tests/prepare.sh >/dev/null
packaging/build.sh
tests/packaging/check-packages.sh
tests/packaging/lint.sh
tests/packaging/recognise.sh
tests/packaging/completions.sh
tests/packaging/rpm-cycle.sh
tests/packaging/deb-cycle.sh
