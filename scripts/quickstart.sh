#!/usr/bin/env bash
# The main job, from a fresh Debian machine, as root: install what jetpack needs, initialize it
# with the embedded defaults (directory storage; ZFS when JETPACK_ZFS_DATASET names a dataset),
# build the example images from busybox-static, start the supervisor, run the showenv pod in
# the foreground, run the httpd pod detached and fetch its page through the forwarded port, and
# print the events of all this. The supervisor is left running; the last line says how to stop
# it. Running it twice works (images are re-imported as no-ops, pods are made anew).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run as root (namespaces, mounts and networking need it)" >&2
    exit 1
fi

packages=(busybox-static iproute2 nftables gnupg file make python3-venv wget)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "quickstart: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# Installed as a user installs it (a built wheel, not an editable checkout), so the quickstart
# runs exactly what `pip install` ships.
echo "== installing jetpack into .venv (log: .venv/install.log)"
if ! .venv/bin/python -m pip install -q . >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    exit 1
fi
jetpack=(.venv/bin/jetpack)
if [ -n "${JETPACK_ZFS_DATASET:-}" ]; then
    jetpack+=(-o storage.driver=zfs -o "root.zfs=$JETPACK_ZFS_DATASET")
fi
export PATH="$repo/.venv/bin:$PATH"

echo "== jetpack init"
"${jetpack[@]}" init

echo "== building the example images (images/)"
make -s -C images all
for image in busybox showenv httpd; do
    "${jetpack[@]}" import "images/$image/$image.aci" >/dev/null
done
"${jetpack[@]}" images

sock=$("${jetpack[@]}" config supervisor.socket)
if ! "${jetpack[@]}" status >/dev/null 2>&1; then
    echo "== starting the supervisor (log: /var/log/jetpack.log)"
    mkdir -p /var/log
    nohup "${jetpack[@]}" daemon --pidfile /run/jetpack.pid >>/var/log/jetpack.log 2>&1 &
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "quickstart: the supervisor did not start; see /var/log/jetpack.log" >&2; exit 1; }
fi
since=$("${jetpack[@]}" events --no-follow --json | tail -n 1 | sed -n 's/.*"seq":\([0-9]*\).*/\1/p')
since=${since:-0}

echo "== jetpack run jetpack.example/showenv (foreground)"
"${jetpack[@]}" run --rm jetpack.example/showenv

echo "== jetpack prepare + start jetpack.example/httpd, port http -> 8080 on the host"
if "${jetpack[@]}" list --json | grep -q '"name": "quickstart-httpd"'; then
    "${jetpack[@]}" destroy quickstart-httpd >/dev/null
fi
pod=$("${jetpack[@]}" prepare --name quickstart-httpd --restart always -p http:8080 jetpack.example/httpd | tail -n 1)
"${jetpack[@]}" start "$pod"
echo "== wget http://127.0.0.1:8080/"
for _ in $(seq 50); do wget -qO- http://127.0.0.1:8080/ && break; sleep 0.1; done

echo "== jetpack events --no-follow --since $since"
"${jetpack[@]}" events --no-follow --since "$since"

echo
echo "The supervisor is still running (pid $(cat /run/jetpack.pid 2>/dev/null || echo '?')), with the httpd pod."
echo "Stop it with: $repo/.venv/bin/jetpack daemon-stop"
