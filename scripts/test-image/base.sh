#!/bin/bash
# Builds a test image's base operating system from Debian packages, in the shape a bootc base
# image has, into the directory $1 (which must not exist). $2 is the flavor:
#   bookworm  Debian 12: ostree 2022.7, no composefs, no SELinux (the Debian-shaped image)
#   sid       Debian sid: ostree 2026.x built with composefs, `[composefs] enabled = yes` in its
#             initramfs, SELinux policy installed (the Fedora-shaped image)
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
# module (ostree-boot) puts ostree-prepare-root into the initramfs; shim, signed GRUB and the
# BIOS GRUB modules so that kiln finds its bootloader in the image, as bootupd ships it.
PACKAGES=(
  systemd systemd-sysv udev dbus kmod procps util-linux mount
  e2fsprogs xfsprogs btrfs-progs dosfstools
  ostree ostree-boot
  shim-signed grub-efi-amd64-signed grub-pc-bin
  attr libcap2-bin
)
APT_OPTS=()
case $FLAVOR in
  bookworm) ;;
  sid)
    # composefs tools and erofs-utils serve the tests as oracles (mkcomposefs, composefs-info,
    # fsck.erofs, setfiles, matchpathcon), run from this tree; the policy is Debian's refpolicy.
    PACKAGES+=(composefs erofs-utils fsverity selinux-policy-default policycoreutils selinux-utils)
    # The mirror's sid Release file is past its Valid-Until date.
    APT_OPTS=(-o Acquire::Check-Valid-Until=false)
    ;;
  *) echo "unknown flavor $FLAVOR (bookworm or sid)" >&2; exit 1 ;;
esac

mkdir -p "$DEBS"
debootstrap --variant=minbase --cache-dir="$DEBS" "$FLAVOR" "$ROOT" "$MIRROR" >/dev/null

cleanup() {
  for m in dev/pts dev proc sys var/cache/apt/archives; do
    mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"
  done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount --bind "$DEBS" "$ROOT/var/cache/apt/archives"
in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
apt_get() { in_root apt-get "${APT_OPTS[@]}" "$@"; }

echo "deb $MIRROR $FLAVOR main" > "$ROOT/etc/apt/sources.list"
apt_get update -qq

if [ "$FLAVOR" = sid ]; then
  # The composefs mode the image boots with lives in its initramfs: written before dracut runs,
  # as Fedora's bootc images ship it.
  mkdir -p "$ROOT/usr/lib/ostree"
  printf '[composefs]\nenabled = yes\n[sysroot]\nreadonly = true\n' > "$ROOT/usr/lib/ostree/prepare-root.conf"
fi

# dracut first, so the kernel's initramfs-tool dependency is satisfied by it.
apt_get install -y -qq --no-install-recommends dracut >/dev/null
if [ "$FLAVOR" = sid ]; then
  # sid's selinux-policy-default postinst disables a module (`likewise`) it no longer ships,
  # which fails in a chroot (`semodule: Failed on likewise!`): unpack, drop the name, configure.
  apt_get install -y -qq --no-install-recommends "${PACKAGES[@]}" linux-image-amd64 >/dev/null 2>&1 || true
  sed -i 's/\blikewise\b//g' "$ROOT/var/lib/dpkg/info/selinux-policy-default.postinst"
  in_root dpkg --configure -a >/dev/null
fi
apt_get install -y -qq --no-install-recommends linux-image-amd64 "${PACKAGES[@]}" >/dev/null

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
EFI=$ROOT/usr/lib/bootupd/updates/EFI
mkdir -p "$EFI/BOOT" "$EFI/debian"
cp "$ROOT/usr/lib/shim/shimx64.efi.signed" "$EFI/BOOT/BOOTX64.EFI"
cp "$ROOT/usr/lib/shim/fbx64.efi.signed" "$EFI/BOOT/fbx64.efi"
cp "$ROOT/usr/lib/shim/shimx64.efi.signed" "$EFI/debian/shimx64.efi"
cp "$ROOT/usr/lib/shim/mmx64.efi.signed" "$EFI/debian/mmx64.efi"
cp "$ROOT/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$EFI/debian/grubx64.efi"
# fbx64.efi reads this (UTF-16LE with BOM) to create the firmware boot entry.
{ printf '\xff\xfe'; printf 'shimx64.efi,debian,,This is the boot entry for debian\n' | iconv -t UTF-16LE; } \
  > "$EFI/debian/BOOTX64.CSV"
SHIMV=$(in_root dpkg-query -W -f='${Version}' shim-signed)
GRUBV=$(in_root dpkg-query -W -f='${Version}' grub-efi-amd64-signed)
cat > "$ROOT/usr/lib/bootupd/updates/EFI.json" <<J
{"timestamp":"2025-05-20T00:00:00Z","version":"grub-efi-amd64-signed-$GRUBV,shim-signed-$SHIMV","versions":[{"name":"grub-efi-amd64-signed","rpm_evr":"$GRUBV"},{"name":"shim-signed","rpm_evr":"$SHIMV"}]}
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
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
  "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log "$ROOT"/var/cache/debconf/*-old
cleanup
trap - EXIT
# Nothing of the build host's may stay: device nodes and the like are not image content.
rm -rf "${ROOT:?}"/dev/* "$ROOT"/proc/* "$ROOT"/sys/* "$ROOT"/run/* "$ROOT"/tmp/*
