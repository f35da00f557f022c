#!/usr/bin/env bash
# Build the local stand-in for an EC2 Ubuntu host: a Debian root made with
# debootstrap from this host's own apt mirror, systemd as PID 1, sshd, sudo and iproute2 (as in
# Ubuntu's cloud images: Ansible reads a host's addresses with `ip`),
# and a first-boot unit that does what cloud-init does on EC2 (tests/support/standin_image/).
# No registry is involved. The packed root is cached in .cache/ between runs.
#   STANDIN_SUITE=bookworm (Debian 12, Python 3.11; default) or trixie (Debian 13,
#   Python 3.13: a host whose Python is not the controller's, as Ubuntu 24.04's 3.12 is not).
set -euo pipefail
cd "$(dirname "$0")/.."

STANDIN=tests/support/standin_image
# The image and its cache are named after what goes into them, so a change rebuilds both.
SUITE="${STANDIN_SUITE:-bookworm}"
case "$SUITE" in bookworm | trixie) ;; *) echo "STANDIN_SUITE must be bookworm or trixie, not $SUITE" >&2; exit 2 ;; esac
VERSION=$(cat "$0" "$STANDIN"/* | sha256sum | cut -c1-12)
IMAGE="localhost/fruitcloud-ec2-standin-$SUITE:$VERSION"
ARCHIVE=.cache/ec2-standin-$SUITE-rootfs-$VERSION.tar.zst
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/molecule/containers.conf}"

# Two pytest workers may ask for the same image at once: one builds, the other waits for it.
mkdir -p .cache
exec 9>".cache/ec2-standin-$SUITE.lock"
flock 9

if podman image exists "$IMAGE"; then
  echo "$IMAGE"
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
  echo "debootstrap $SUITE from $mirror" >&2
  debootstrap --variant=minbase \
    --include=python3,python3-apt,python3-packaging,systemd,systemd-sysv,dbus,ca-certificates,openssh-server,sudo,iproute2 \
    "$SUITE" "$rootfs" "$mirror" >/dev/null
  chroot "$rootfs" apt-get clean
  # Host keys are made at first boot, per instance, as cloud-init does.
  rm -f "$rootfs"/etc/ssh/ssh_host_*
  install -m 0755 "$STANDIN/cloud-init-standin.py" "$rootfs/usr/local/sbin/cloud-init-standin.py"
  install -m 0644 "$STANDIN/cloud-init-standin.service" "$rootfs/etc/systemd/system/cloud-init-standin.service"
  install -d "$rootfs/etc/systemd/system/ssh.service.d"
  install -m 0644 "$STANDIN/ssh-after-cloud-init.conf" "$rootfs/etc/systemd/system/ssh.service.d/cloud-init-standin.conf"
  ln -sf /etc/systemd/system/cloud-init-standin.service "$rootfs/etc/systemd/system/multi-user.target.wants/cloud-init-standin.service"
  rm -rf "$rootfs"/var/lib/apt/lists/*
  # An empty lists dir newer than cache_valid_time would make apt skip its update.
  touch -d 2000-01-01 "$rootfs/var/lib/apt/lists"
  mkdir -p .cache
  tar -C "$rootfs" -cf - . | zstd -q -T0 -o "$ARCHIVE"
fi
zstd -dc "$ARCHIVE" | podman import --change 'CMD ["/sbin/init"]' - "$IMAGE" >/dev/null
echo "$IMAGE"
