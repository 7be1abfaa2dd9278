#!/bin/sh
# manifest.sh TEMPLATE OUT: fill @OS@ @ARCH@ in an image manifest template with the host's
# appc os/arch names.
set -eu
os=$(uname -s | tr 'A-Z' 'a-z')
case $(uname -m) in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=aarch64 ;;
    i386|i686) arch=i386 ;;
    *) arch=$(uname -m) ;;
esac
sed -e "s/@OS@/$os/g" -e "s/@ARCH@/$arch/g" "$1" > "$2"
