#!/bin/sh
# rootfs.sh DIR: the httpd layer, a page to serve.
set -eu
mkdir -p "$1/var/www"
cat > "$1/var/www/index.html" <<'PAGE'
<!doctype html>
<title>jetpack</title>
<h1>Hello from a jetpack pod</h1>
PAGE
