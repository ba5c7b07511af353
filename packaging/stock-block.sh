# Shell functions shared by the .deb's and the .rpm's maintainer scripts
# (packaging/build.sh pastes this file where a script says
# `#@STOCK_BLOCK_FUNCTIONS@`): the packages replace /etc/xen/scripts/block
# only when it is Xen's own script, never a site's or a vendor's variant.
# POSIX sh and grep -E only: they run under OL6's bash 4.1 and dash alike.
# No percent sign anywhere in this file: rpmbuild would read a macro.

# xbh_block_kind PATH: prints what PATH is:
#   absent   nothing there;
#   ours     a symlink to /usr/sbin/xen-block-hotplug;
#   stock    Xen's stock block script, as shipped from Xen 3.x through 4.x:
#            a shell script that sources block-common.sh and handles the
#            `phy` and `file` types through write_dev;
#   foreign  anything else (a site's own script, a vendor's variant with
#            another contract, a link elsewhere).
xbh_block_kind() {
    if [ ! -e "$1" ] && [ ! -L "$1" ]; then
        echo absent
    elif [ -L "$1" ]; then
        if [ "$(readlink "$1")" = /usr/sbin/xen-block-hotplug ]; then
            echo ours
        else
            echo foreign
        fi
    elif [ -f "$1" ] && xbh_is_stock_script "$1"; then
        echo stock
    else
        echo foreign
    fi
}

xbh_is_stock_script() {
    first=$(head -n 1 "$1")
    case $first in
    '#!/bin/bash'* | '#!/bin/sh'* | '#! /bin/bash'* | '#! /bin/sh'*) ;;
    *) return 1 ;;
    esac
    grep -Eq '^[[:space:]]*(\.|source)[[:space:]]+"?[^[:space:]]*block-common\.sh"?[[:space:]]*$' "$1" &&
        grep -Eq '^[[:space:]]*phy\)' "$1" &&
        grep -Eq '^[[:space:]]*file\)' "$1" &&
        grep -Eq '^[[:space:]]*write_dev[[:space:]]' "$1"
}

# xbh_foreign_notice PATH: tells the admin, on the terminal, what was found
# at PATH and how to switch to this binary by hand (and back).
xbh_foreign_notice() {
    if [ -L "$1" ]; then
        found="a symbolic link to $(readlink "$1" | tr -cd '[:print:]' | cut -c1-100)"
    elif [ -f "$1" ]; then
        first=$(head -n 1 "$1")
        found="a file that is not Xen's stock script (first line: $(echo "$first" | tr -cd '[:print:]' | cut -c1-80))"
    else
        found="something that is not a file"
    fi
    cat >&2 <<EOF
xen-block-hotplug: $1 is $found.
  Xen's stock script sources block-common.sh and handles file and phy
  through write_dev; this one does not, so it was left as it is and Xen
  keeps running it. The binary is installed as /usr/sbin/xen-block-hotplug.
  To use it instead, by hand:
    mv $1 $1.site && ln -s /usr/sbin/xen-block-hotplug $1
  and to go back:
    rm $1 && mv $1.site $1
EOF
}
