#!/bin/bash
# Installs every Debian package kiln, its tests and the demo need. Idempotent: packages
# already present are skipped, so a second run makes no network requests.
set -euo pipefail
PKGS=(
  # boot harness (x86_64: OVMF and SeaBIOS; aarch64: AAVMF on the virt machine), and fdtput
  # to make the devicetree the aarch64 devicetree test ships
  qemu-system-x86 ovmf qemu-system-arm qemu-efi-aarch64 device-tree-compiler
  # filesystems and partition tables (oracles and mkfs for the root filesystem)
  e2fsprogs xfsprogs btrfs-progs dosfstools mtools gdisk fdisk util-linux
  # install to-disk refusals: a partition held by device-mapper (where the kernel has it)
  dmsetup
  # the test image and the image oracles
  debootstrap ostree skopeo umoci zstd gzip tar cpio jq attr libcap2-bin
  # disk-format and OVF oracles
  qemu-utils libxml2-utils python3-libvmdk
  # ISO oracles: xorriso/osirrox, isoinfo, 7z
  xorriso genisoimage p7zip-full
  # the asahi package's oracles (unzip -t; the ESP the installer would format, filled by mtools)
  unzip
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
# Python tools the tests need that bookworm does not package (or packages too old), each in
# a venv of its own with every dependency pinned; reinstalled when its requirements change.
# venv DIR REQUIREMENTS CHECK…: CHECK (run with the venv's bin/ first) proves it works.
venv() {
  local dir=$1 reqs; reqs=$(dirname "$(realpath "$0")")/$2; shift 2
  local stamp; stamp=$(sha256sum "$reqs" | cut -c1-16)
  [ "$(cat "$dir/.kiln-stamp" 2>/dev/null)" = "$stamp" ] && return
  echo "setup: installing $(basename "$reqs" -requirements.txt) into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$reqs"
  PATH="$dir/bin:$PATH" "$@" >/dev/null
  echo "$stamp" > "$dir/.kiln-stamp"
}
# moto, the AWS emulator the cloud tests start on 127.0.0.1 (moto >= 5.2.2: older ones answer
# CompleteMultipartUpload wrongly).
venv "${KILN_MOTO_VENV:-/opt/kiln-moto}" moto-requirements.txt python -c "import moto.server, boto3"
# virt-firmware (virt-fw-vars), the oracle that reads OVMF variable stores (the install guest
# test's boot entry and MOK request).
venv "${KILN_VIRT_FIRMWARE_VENV:-/opt/kiln-virt-firmware}" virt-firmware-requirements.txt virt-fw-vars --help
# qemu-aarch64-static builds the arm64 test image (base.sh runs its dpkg and dracut under
# emulation). Only the binary is taken from the package: installing qemu-user-static would leave
# binfmt handlers registered for good, and kiln's arm64 bake test checks that none is (kiln must
# never need to run the image's binaries). base.sh registers it for its own run only.
QEMU_USER=${KILN_QEMU_USER_DIR:-/opt/kiln-qemu-user}
if [ ! -x "$QEMU_USER/qemu-aarch64-static" ]; then
  echo "setup: extracting qemu-aarch64-static into $QEMU_USER"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq qemu-user-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download -qq qemu-user-static; })
  mkdir -p "$QEMU_USER"
  dpkg-deb --fsys-tarfile "$tmp"/qemu-user-static_*.deb | tar -x -C "$tmp" ./usr/bin/qemu-aarch64-static
  mv "$tmp/usr/bin/qemu-aarch64-static" "$QEMU_USER/"
  rm -rf "$tmp"
fi
echo "setup: all packages present"
