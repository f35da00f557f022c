#!/usr/bin/env bash
# Build the local Molecule target: a Debian 12 root made with debootstrap from
# this host's own apt mirror, with systemd as PID 1, imported into podman.
# No registry is involved. The packed root is cached in .cache/ between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${MOLECULE_IMAGE:-localhost/fruitcloud-debian12}"
ARCHIVE=.cache/debian12-rootfs.tar.zst
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"

if podman image exists "$IMAGE"; then
  echo "podman image $IMAGE already present"
  exit 0
fi

debian_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | grep -v security | head -n1 || true)
  fi
  [[ -n "$uri" ]] || { echo "no Debian mirror found in this host's apt sources" >&2; exit 1; }
  echo "$uri"
}

if [[ ! -f "$ARCHIVE" ]]; then
  rootfs=$(mktemp -d /var/tmp/fruitcloud-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  mirror=$(debian_mirror)
  echo "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase \
    --include=python3,python3-apt,python3-packaging,systemd,systemd-sysv,dbus,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/*
  # An empty lists dir newer than cache_valid_time would make apt skip its update.
  touch -d 2000-01-01 "$rootfs/var/lib/apt/lists"
  mkdir -p .cache
  tar -C "$rootfs" -cf - . | zstd -q -T0 -o "$ARCHIVE"
fi
zstd -dc "$ARCHIVE" | podman import --change 'CMD ["/sbin/init"]' - "$IMAGE" >/dev/null
echo "built podman image $IMAGE"
