#!/bin/bash
# Builds a test image's base operating system from Debian packages, in the shape a bootc base
# image has, into the directory $1 (which must not exist). $2 is the flavor:
#   bookworm        Debian 12 amd64: ostree 2022.7, no composefs, no SELinux (the Debian-shaped
#                   image)
#   sid             Debian sid amd64: ostree 2026.x built with composefs, `[composefs] enabled =
#                   yes` in its initramfs, SELinux policy installed (the Fedora-shaped image)
#   bookworm-arm64  Debian 12 arm64, bookworm's shape, plus the Apple Silicon boot files (m1n1,
#                   U-Boot) from trixie; built on any host, its binaries run through qemu-user
#
# Running the image's own binaries (apt, dracut) is fine here: this builds a test fixture, it
# is not kiln. Everything that later issues check (layer semantics, kargs, the probe) is added
# on top by layers.py, so the slow part here is cached separately by build.sh.
set -euo pipefail
ROOT=$1
FLAVOR=${2:-bookworm}
DEBS=${DEBS_CACHE:?}/$FLAVOR
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Packages of the running system. dracut (not initramfs-tools) so that Debian's ostree dracut
# module (ostree-boot) puts ostree-prepare-root into the initramfs; shim, signed GRUB (and the
# BIOS GRUB modules on x86) so that kiln finds its bootloader in the image, as bootupd ships it.
PACKAGES=(
  systemd systemd-sysv udev dbus kmod procps util-linux mount
  e2fsprogs xfsprogs btrfs-progs dosfstools
  ostree ostree-boot
  attr libcap2-bin
)
APT_OPTS=()
case $FLAVOR in
  bookworm) SUITE=bookworm ARCH=amd64 ;;
  sid)
    SUITE=sid ARCH=amd64
    # composefs tools and erofs-utils serve the tests as oracles (mkcomposefs, composefs-info,
    # fsck.erofs, setfiles, matchpathcon), run from this tree; the policy is Debian's refpolicy.
    PACKAGES+=(composefs erofs-utils fsverity selinux-policy-default policycoreutils selinux-utils)
    # The mirror's sid Release file is past its Valid-Until date.
    APT_OPTS=(-o Acquire::Check-Valid-Until=false)
    ;;
  bookworm-arm64) SUITE=bookworm ARCH=arm64 ;;
  *) echo "unknown flavor $FLAVOR (bookworm, sid or bookworm-arm64)" >&2; exit 1 ;;
esac
# The UEFI file names' architecture suffix (shim<EFI>.efi) and the signed GRUB's directory.
case $ARCH in
  amd64)
    PACKAGES+=(linux-image-amd64 shim-signed grub-efi-amd64-signed grub-pc-bin)
    EFI=x64 GRUB_SIGNED=x86_64-efi-signed ;;
  arm64)
    PACKAGES+=(linux-image-arm64 shim-signed shim-helpers-arm64-signed grub-efi-arm64-signed)
    EFI=aa64 GRUB_SIGNED=arm64-efi-signed ;;
esac
EFI_UPPER=$(echo "$EFI" | tr a-z A-Z)

# A foreign architecture's binaries run through qemu-user, registered with binfmt_misc for this
# build only (scripts/setup.sh extracts the emulator; the F flag opens it now, so nothing is
# copied into the root) and removed on exit, whatever happens.
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_NAME=kiln-test-image-$ARCH
BINFMT_MOUNTED=
emulate() {
  local qemu=${KILN_QEMU_USER_DIR:-/opt/kiln-qemu-user}/qemu-aarch64-static
  [ "$ARCH" = arm64 ] && [ -x "$qemu" ] || { echo "cannot run $ARCH binaries: $qemu is missing (run scripts/setup.sh)" >&2; exit 1; }
  if ! mountpoint -q "$BINFMT"; then mount -t binfmt_misc binfmt_misc "$BINFMT"; BINFMT_MOUNTED=1; fi
  [ -e "$BINFMT/$BINFMT_NAME" ] && echo -1 > "$BINFMT/$BINFMT_NAME"
  # ELF64, little-endian, EM_AARCH64 (0xb7).
  printf '%s' ":$BINFMT_NAME:M::"'\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$qemu:OCF" \
    > "$BINFMT/register"
}
stop_emulating() {
  [ -e "$BINFMT/$BINFMT_NAME" ] && echo -1 > "$BINFMT/$BINFMT_NAME"
  [ -z "$BINFMT_MOUNTED" ] || umount "$BINFMT"
  BINFMT_MOUNTED=
}
cleanup() {
  for m in dev/pts dev proc sys var/cache/apt/archives; do
    mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"
  done
  stop_emulating
}
trap cleanup EXIT
# Where the build's time goes (the arm64 one runs every maintainer script under emulation).
START=$SECONDS
phase() { echo "test image: $FLAVOR base: $1 after $((SECONDS - START)) s" >&2; }

mkdir -p "$DEBS"
if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
  debootstrap --variant=minbase --cache-dir="$DEBS" "$SUITE" "$ROOT" "$MIRROR" >/dev/null
else
  emulate
  debootstrap --arch="$ARCH" --foreign --variant=minbase --cache-dir="$DEBS" "$SUITE" "$ROOT" "$MIRROR" >/dev/null
  # No fsync per unpacked file: a fixture, rebuilt from scratch if the build dies.
  echo force-unsafe-io > "$ROOT/etc/dpkg/dpkg.cfg.d/kiln-test-image"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >/dev/null
fi
echo force-unsafe-io > "$ROOT/etc/dpkg/dpkg.cfg.d/kiln-test-image"
phase debootstrap

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount --bind "$DEBS" "$ROOT/var/cache/apt/archives"
in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
apt_get() { in_root apt-get "${APT_OPTS[@]}" "$@"; }

echo "deb $MIRROR $SUITE main" > "$ROOT/etc/apt/sources.list"
apt_get update -qq

if [ "$FLAVOR" = sid ]; then
  # The composefs mode the image boots with lives in its initramfs: written before dracut runs,
  # as Fedora's bootc images ship it.
  mkdir -p "$ROOT/usr/lib/ostree"
  printf '[composefs]\nenabled = yes\n[sysroot]\nreadonly = true\n' > "$ROOT/usr/lib/ostree/prepare-root.conf"
fi

# dracut first, so the kernel's initramfs-tool dependency is satisfied by it. It runs once, at
# the end: the kernel's postinst and dracut's update-initramfs trigger would each run it again
# (minutes, and several more under emulation), so it is diverted to `true` meanwhile.
apt_get install -y -qq --no-install-recommends dracut >/dev/null
in_root dpkg-divert --local --rename --add /usr/bin/dracut >/dev/null
ln -s /bin/true "$ROOT/usr/bin/dracut"
if [ "$FLAVOR" = sid ]; then
  # sid's selinux-policy-default postinst disables a module (`likewise`) it no longer ships,
  # which fails in a chroot (`semodule: Failed on likewise!`): unpack, drop the name, configure.
  apt_get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 || true
  sed -i 's/\blikewise\b//g' "$ROOT/var/lib/dpkg/info/selinux-policy-default.postinst"
  in_root dpkg --configure -a >/dev/null
fi
apt_get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
if [ "$ARCH" = arm64 ]; then
  # Apple Silicon's boot files, as an Asahi image carries them (m1n1's stage 2 and U-Boot, which
  # kiln's `--type asahi` assembles into m1n1/boot.bin): Debian packages them from trixie on.
  echo "deb $MIRROR trixie main" > "$ROOT/etc/apt/sources.list.d/trixie.list"
  apt_get update -qq
  in_root sh -c 'cd /tmp && apt-get download -qq m1n1 u-boot-asahi' 2>/dev/null
  in_root sh -c 'dpkg -i /tmp/m1n1_*.deb /tmp/u-boot-asahi_*.deb' >/dev/null
  rm -f "$ROOT"/tmp/*.deb "$ROOT/etc/apt/sources.list.d/trixie.list"
fi
phase "packages installed"
rm "$ROOT/usr/bin/dracut"
in_root dpkg-divert --local --rename --remove /usr/bin/dracut >/dev/null

KVER=$(ls "$ROOT/usr/lib/modules")
[ "$(echo "$KVER" | wc -w)" = 1 ] || { echo "expected one kernel, found: $KVER" >&2; exit 1; }

# Drop drivers a virtual machine never needs: the image stays small, bakes and boots quick.
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
         drivers/bluetooth net/bluetooth net/wireless drivers/iio drivers/isdn drivers/net/ethernet \
         drivers/misc drivers/hwmon drivers/platform drivers/input/touchscreen drivers/mtd; do
  rm -rf "$ROOT/usr/lib/modules/$KVER/kernel/$d"
done
in_root depmod -a "$KVER"

# The initramfs as a bootc image carries it: generic (not host-only), with ostree-prepare-root.
in_root dracut --force --quiet --no-hostonly --add ostree --omit "plymouth i18n" \
  --kver "$KVER" "/usr/lib/modules/$KVER/initramfs.img"
phase "dracut"
if [ "$FLAVOR" = sid ]; then
  # What the Fedora-family images rely on must be inside: the composefs mode, erofs, overlay.
  CONTENT=$(in_root lsinitrd "/usr/lib/modules/$KVER/initramfs.img")
  for f in usr/lib/ostree/prepare-root.conf erofs.ko overlay.ko; do
    grep -q "$f" <<<"$CONTENT" || { echo "the sid initramfs lacks $f" >&2; exit 1; }
  done
fi
# (sid's kernel package already ships it there, as the same file.)
[ "$ROOT/boot/vmlinuz-$KVER" -ef "$ROOT/usr/lib/modules/$KVER/vmlinuz" ] ||
  cp "$ROOT/boot/vmlinuz-$KVER" "$ROOT/usr/lib/modules/$KVER/vmlinuz"
rm -rf "${ROOT:?}/boot/"* "$ROOT/initrd.img"* "$ROOT/vmlinuz"*

# Bootloader binaries laid out as bootupd ships them in an image.
UPDATES=$ROOT/usr/lib/bootupd/updates/EFI
mkdir -p "$UPDATES/BOOT" "$UPDATES/debian"
cp "$ROOT/usr/lib/shim/shim$EFI.efi.signed" "$UPDATES/BOOT/BOOT$EFI_UPPER.EFI"
cp "$ROOT/usr/lib/shim/fb$EFI.efi.signed" "$UPDATES/BOOT/fb$EFI.efi"
cp "$ROOT/usr/lib/shim/shim$EFI.efi.signed" "$UPDATES/debian/shim$EFI.efi"
cp "$ROOT/usr/lib/shim/mm$EFI.efi.signed" "$UPDATES/debian/mm$EFI.efi"
cp "$ROOT/usr/lib/grub/$GRUB_SIGNED/grub$EFI.efi.signed" "$UPDATES/debian/grub$EFI.efi"
# fb<arch>.efi reads this (UTF-16LE with BOM) to create the firmware boot entry.
{ printf '\xff\xfe'; printf 'shim%s.efi,debian,,This is the boot entry for debian\n' "$EFI" | iconv -t UTF-16LE; } \
  > "$UPDATES/debian/BOOT$EFI_UPPER.CSV"
GRUB_PACKAGE=grub-efi-$ARCH-signed
SHIMV=$(in_root dpkg-query -W -f='${Version}' shim-signed)
GRUBV=$(in_root dpkg-query -W -f='${Version}' "$GRUB_PACKAGE")
cat > "$ROOT/usr/lib/bootupd/updates/EFI.json" <<J
{"timestamp":"2025-05-20T00:00:00Z","version":"$GRUB_PACKAGE-$GRUBV,shim-signed-$SHIMV","versions":[{"name":"$GRUB_PACKAGE","rpm_evr":"$GRUBV"},{"name":"shim-signed","rpm_evr":"$SHIMV"}]}
J

if [ "$FLAVOR" = sid ]; then
  # SELinux on, permissive, with Debian's refpolicy; the kernel is told by kargs.d (layers.py).
  # No /.autorelabel: the labels are the installer's (kiln's) job, and the probe checks them.
  printf 'SELINUX=permissive\nSELINUXTYPE=default\n' > "$ROOT/etc/selinux/config"
  rm -f "$ROOT/.autorelabel"
fi

# bootc image conventions: state lives in /var, the root is the ostree sysroot.
in_root passwd -d root >/dev/null
echo kiln-test > "$ROOT/etc/hostname"
: > "$ROOT/etc/machine-id"
printf '# filesystems are mounted by the installer (kiln) through this deployment'"'"'s fstab\n' > "$ROOT/etc/fstab"
for d in home root opt srv mnt media; do rm -rf "${ROOT:?}/$d"; done
rm -rf "$ROOT/usr/local"
ln -s var/home "$ROOT/home"
ln -s var/roothome "$ROOT/root"
ln -s var/opt "$ROOT/opt"
ln -s var/srv "$ROOT/srv"
ln -s var/mnt "$ROOT/mnt"
ln -s run/media "$ROOT/media"
ln -s ../var/usrlocal "$ROOT/usr/local"
mkdir -p "$ROOT/sysroot"
ln -s sysroot/ostree "$ROOT/ostree"
cat > "$ROOT/usr/lib/tmpfiles.d/bootc-var.conf" <<T
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/usrlocal 0755 root root -
T
# Keep the boot short under emulation.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer >/dev/null 2>&1 || true

apt_get clean
rm -f "$ROOT/etc/dpkg/dpkg.cfg.d/kiln-test-image"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
  "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/var/cache/debconf/*-old
cleanup
trap - EXIT
# Nothing of the build host's may stay: device nodes and the like are not image content.
rm -rf "${ROOT:?}"/dev/* "$ROOT"/proc/* "$ROOT"/sys/* "$ROOT"/run/* "$ROOT"/tmp/*
