#!/bin/sh
# rootfs.sh DIR: the showenv layer, one script.
set -eu
mkdir -p "$1"
cat > "$1/showenv" <<'SCRIPT'
#!/bin/sh
# Prints what an appc app sees: its environment, and what the metadata service says of it.
echo "== environment"
env | sort
echo "== metadata service ($AC_METADATA_URL)"
echo "pod uuid: $(wget -qO- "$AC_METADATA_URL/acMetadata/v1/pod/uuid")"
echo "app image id: $(wget -qO- "$AC_METADATA_URL/acMetadata/v1/apps/$AC_APP_NAME/image/id")"
echo "== identity: $(id)"
echo "== hostname: $(hostname)"
SCRIPT
chmod 755 "$1/showenv"
