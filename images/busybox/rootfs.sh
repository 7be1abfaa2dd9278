#!/bin/sh
# rootfs.sh BUSYBOX DIR: a minimal userland in DIR from a statically linked busybox.
set -eu
busybox=$1
root=$2
if ! file -L "$busybox" 2>/dev/null | grep -Eq 'statically linked|static-pie'; then
    echo "rootfs.sh: $busybox is not statically linked (install busybox-static)" >&2
    exit 1
fi
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" \
    "$root/root" "$root/var/www" "$root/proc" "$root/sys" "$root/dev" "$root/home/user"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
chmod 755 "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$root/$applet" ] && continue
    dir=$(dirname "$applet")
    case $dir in
        bin) ln -s busybox "$root/$applet" ;;
        sbin|usr) ln -s ../bin/busybox "$root/$applet" ;;
        usr/bin|usr/sbin) ln -s ../../bin/busybox "$root/$applet" ;;
    esac
done
cat > "$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www:x:80:80:www:/var/www:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<GROUP
root:x:0:
daemon:x:1:
www:x:80:
users:x:100:user
user:x:1000:
nogroup:x:65534:
GROUP
chown 1000:1000 "$root/home/user"
