#!/bin/bash
# Installs every Debian package kiln, its tests and the demo need. Idempotent: packages
# already present are skipped, so a second run makes no network requests.
set -euo pipefail
PKGS=(
  # boot harness
  qemu-system-x86 ovmf
  # filesystems and partition tables (oracles and mkfs for the root filesystem)
  e2fsprogs xfsprogs btrfs-progs dosfstools mtools gdisk fdisk util-linux
  # install to-disk refusals: a partition held by device-mapper (where the kernel has it)
  dmsetup
  # the test image and the image oracles
  debootstrap ostree skopeo umoci zstd gzip tar cpio jq attr libcap2-bin
  # disk-format and OVF oracles
  qemu-utils libxml2-utils python3-libvmdk
  # the reference pipeline (the speed peer)
  grub-efi-amd64-bin grub-pc-bin grub-common
  # local registry tests
  docker-registry apache2-utils
  python3 python3-venv ca-certificates openssl curl time
  # building kiln: TLS for registry pulls links the system OpenSSL
  libssl-dev pkg-config
)
missing() {
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}
# Two passes: installing one package can remove another the machine had (a backported
# qemu-utils conflicts with bookworm's qemu-system-x86), so what the first pass removed is
# installed again, in the distribution's matching version.
updated=
for pass in 1 2; do
  todo=($(missing))
  [ ${#todo[@]} -eq 0 ] && break
  echo "setup: installing ${todo[*]}"
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  apt-get install -y -qq --no-install-recommends "${todo[@]}" >/dev/null
done
todo=($(missing))
[ ${#todo[@]} -eq 0 ] || { echo "setup: could not install ${todo[*]}" >&2; exit 1; }
# docker-registry's package starts a system service on :5000; tests start their own.
if systemctl is-active --quiet docker-registry 2>/dev/null; then systemctl stop docker-registry || true; fi
# moto, the AWS emulator the cloud tests start on 127.0.0.1, in its own venv with every
# dependency pinned (moto >= 5.2.2: older ones answer CompleteMultipartUpload wrongly).
MOTO_VENV=${KILN_MOTO_VENV:-/opt/kiln-moto}
MOTO_REQS=$(dirname "$(realpath "$0")")/moto-requirements.txt
stamp=$(sha256sum "$MOTO_REQS" | cut -c1-16)
if [ "$(cat "$MOTO_VENV/.kiln-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing moto into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check -r "$MOTO_REQS"
  "$MOTO_VENV/bin/python" -c "import moto.server, boto3"
  echo "$stamp" > "$MOTO_VENV/.kiln-stamp"
fi
# virt-firmware (virt-fw-vars), the oracle that reads OVMF variable stores (the install
# guest test's boot entry and MOK request), in its own venv: bookworm does not package it.
VFW_VENV=${KILN_VIRT_FIRMWARE_VENV:-/opt/kiln-virt-firmware}
VFW_REQS=$(dirname "$(realpath "$0")")/virt-firmware-requirements.txt
stamp=$(sha256sum "$VFW_REQS" | cut -c1-16)
if [ "$(cat "$VFW_VENV/.kiln-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing virt-firmware into $VFW_VENV"
  rm -rf "$VFW_VENV"
  python3 -m venv "$VFW_VENV"
  "$VFW_VENV/bin/pip" install -q --disable-pip-version-check -r "$VFW_REQS"
  "$VFW_VENV/bin/virt-fw-vars" --help >/dev/null
  echo "$stamp" > "$VFW_VENV/.kiln-stamp"
fi
echo "setup: all packages present"
