#!/usr/bin/env bash
# Builds the Haven test VM from Debian packages only:
#   OUT_DIR/vmlinux    the kernel of linux-image-amd64 as an ELF (PVH entry),
#                      decompressed from the bzImage's xz (or zstd) payload
#   OUT_DIR/initrd.gz  busybox-static + the virtio/button/evdev/pvpanic modules
#                      + vm/init (heartbeat, HTTP, acpid, panic settings)
#   OUT_DIR/manifest.txt  what went in (kernel package/version, modules, sizes)
#
# Usage: vm/build-test-vm.sh OUT_DIR
# Env:   HAVEN_VM_CACHE   where the kernel .deb is kept (default /var/cache/haven-vm)
#        HAVEN_VM_KERNEL_PKG  a specific linux-image-* package (default: what
#                         linux-image-amd64 depends on)
# Needs: apt-get/apt-cache, dpkg-deb, busybox-static (/bin/busybox), cpio,
#        gzip, xz (scripts/install-deps.sh installs them); zstd only for
#        zstd-compressed kernels. About 7-9 s with the .deb cached.
#        See vm/README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: $0 OUT_DIR}
cache=${HAVEN_VM_CACHE:-/var/cache/haven-vm}
t_start=$(date +%s.%N)

die() { echo "build-test-vm: $*" >&2; exit 1; }
# What the image is built from, so that a stale one is rebuilt
# (scripts/test.sh compares it with the manifest's "source:" line).
source_id() { cat "$here/init" "$here/build-test-vm.sh" | sha256sum | cut -c1-16; }
if [ "$out" = --source-id ]; then source_id; exit 0; fi
say() { echo "build-test-vm: $*" >&2; }

busybox=/bin/busybox
[ -x "$busybox" ] || busybox=$(command -v busybox || true)
# A dynamic busybox names its ELF interpreter; the static one does not.
[ -n "$busybox" ] && ! LC_ALL=C grep -qa '/lib64/ld-linux-x86-64.so.2' "$busybox" \
  || die "needs a static busybox at /bin/busybox (apt-get install busybox-static)"
for t in dpkg-deb cpio gzip xz apt-get apt-cache; do
  command -v $t >/dev/null || die "needs $t (scripts/install-deps.sh)"
done

mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)

# --- 1. the kernel package: linux-image-amd64 -> linux-image-6.x-amd64 ------
resolve_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '!f && $1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; f = 1 }'
}
pkg=${HAVEN_VM_KERNEL_PKG:-}
[ -n "$pkg" ] || pkg=$(resolve_pkg)
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
  say "apt-cache does not know linux-image-amd64; running apt-get update"
  apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || true
  pkg=$(resolve_pkg)
fi
deb=
if [ -n "$pkg" ]; then
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '!f && $1 == "Candidate:" { print $2; f = 1 }')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version of $pkg"
  deb=$(ls "$cache/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    say "downloading $pkg=$ver into $cache"
    # Sandbox user root: the cache dir need not be writable by _apt.
    (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2)
    deb=$(ls "$cache/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
  fi
else
  # Offline and apt knows nothing: use the newest cached kernel package.
  deb=$(ls -t "$cache"/linux-image-[0-9]*-amd64_*.deb 2>/dev/null | head -1 || true)
  [ -n "$deb" ] && say "apt-cache could not resolve linux-image-amd64; using cached $deb"
fi
[ -n "$deb" ] && [ -f "$deb" ] || die "could not get the kernel package"
pkg=$(dpkg-deb -f "$deb" Package)
ver=$(dpkg-deb -f "$deb" Version)

work=$(mktemp -d "${TMPDIR:-/tmp}/haven-vm-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
x=$work/x
mkdir -p "$x"
# Only the kernel image and the module tree (skips docs etc.).
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards './boot/vmlinuz-*' './lib/modules/*'
vmlinuz=$(ls "$x"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
mdir=$x/lib/modules/$kver
[ -d "$mdir" ] || die "no /lib/modules/$kver in $deb"

# --- 2. vmlinux: the ELF inside the bzImage ---------------------------------
# The bzImage's payload is an xz stream (bookworm's 6.1: CONFIG_KERNEL_XZ; the
# 6.12 kernels use zstd, also handled); the ELF inside has a PVH entry note
# (CONFIG_PVH), so QEMU's -kernel boots it directly through PVH and the guest
# skips the real-mode setup and the in-guest decompression (measured here,
# idle machine: 2.0 s instead of 4.4 s to the first heartbeat under TCG, the
# medians of 9 and 3 boots). Fallback: if no
# payload decompresses to a complete ELF with a PVH note, ship the bzImage
# itself as OUT_DIR/vmlinux (QEMU's -kernel takes both: same command line,
# slower boot).
le() {  # $1 file, $2 offset, $3 bytes: little-endian unsigned integer
  local hex; hex=$(od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n')
  local v= i; for ((i = ${#hex} - 2; i >= 0; i -= 2)); do v+=${hex:i:2}; done
  echo $((16#${v:-0}))
}
elf_ok() {  # $1: file; a whole 64-bit ELF (section table inside the file) with
            # an XEN_ELFNOTE_PHYS32_ENTRY (18) note when readelf is there
  [ "$(head -c5 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c4602 ] || return 1
  local end=$(( $(le "$1" 40 8) + $(le "$1" 58 2) * $(le "$1" 60 2) ))
  [ "$end" -gt 64 ] && [ "$(stat -c %s "$1")" -ge "$end" ] || return 1
  if command -v readelf >/dev/null; then
    local notes; notes=$(readelf -n "$1" 2>/dev/null || true)
    grep -q 'Xen.*(0x00000012)' <<<"$notes" || return 1
  fi
}
kernel_kind=
try_payload() {  # $1 format, $2 offset; (not a pipe: tail would die of SIGPIPE
                 # when the decompressor stops early, and pipefail)
  case "$1" in
    # --single-stream: stop at the end of the xz stream, ignore what follows.
    xz)   xz -dc --single-stream < <(tail -c +$(($2 + 1)) "$vmlinuz") > "$work/vmlinux" 2>/dev/null || return 1 ;;
    # zstd has no such switch and fails on the trailing bytes after writing the
    # whole frame: elf_ok's completeness check decides.
    zstd) command -v zstd >/dev/null || return 1
          zstd -qdc < <(tail -c +$(($2 + 1)) "$vmlinuz") > "$work/vmlinux" 2>/dev/null || true ;;
  esac
  elf_ok "$work/vmlinux"
}
for fmt in xz zstd; do
  case $fmt in
    xz)   magic='\xfd\x37\x7a\x58\x5a\x00' ;;
    zstd) magic='\x28\xb5\x2f\xfd' ;;
  esac
  for off in $(LC_ALL=C grep -obUaP "$magic" "$vmlinuz" | cut -d: -f1); do
    if try_payload $fmt "$off"; then
      kernel_kind="ELF vmlinux (PVH), $fmt payload at offset $off of $(basename "$vmlinuz")"
      break 2
    fi
  done
done
if [ -z "$kernel_kind" ]; then
  say "WARNING: no xz/zstd payload with a PVH ELF in $(basename "$vmlinuz"); shipping the bzImage (boots ~2.4 s slower)"
  cp "$vmlinuz" "$work/vmlinux"
  kernel_kind="bzImage (fallback)"
fi

# --- 3. modules: resolve dependencies from modules.dep ----------------------
# The .deb has no modules.dep (its postinst runs depmod); make one with depmod
# (kmod's if installed, else busybox's, which reads each module's depends=).
if [ ! -s "$mdir/modules.dep" ]; then
  if command -v depmod >/dev/null && depmod -b "$x" "$kver" 2>/dev/null; then :; else
    "$busybox" depmod -b "$x" "$kver"
  fi
fi
[ -s "$mdir/modules.dep" ] || die "depmod made no modules.dep"

# Wanted modules (names with - and _ alike). "?" marks optional ones.
wanted=(virtio virtio_ring virtio_pci virtio_pci_legacy_dev? virtio_pci_modern_dev?
        virtio_console virtio_net net_failover? failover? virtio_blk
        button evdev pvpanic? pvpanic_mmio? pvpanic_pci?)

# Module name of a path: basename without .ko*, "-" -> "_" (sets REPLY; no fork).
norm() { local n=${1##*/}; n=${n%%.ko*}; REPLY=${n//-/_}; }
declare -A path_of deps_of
while IFS= read -r line; do
  f=${line%%:*}
  norm "$f"; n=$REPLY
  path_of[$n]=$f
  deps_of[$n]=${line#*:}
done < "$mdir/modules.dep"
declare -A builtin
if [ -f "$mdir/modules.builtin" ]; then
  while IFS= read -r f; do norm "$f"; builtin[$REPLY]=1; done < "$mdir/modules.builtin"
fi

order=()
declare -A seen
visit() {  # depth first: a module's dependencies before the module
  local n=$1 d
  [ -z "${seen[$n]:-}" ] || return 0
  seen[$n]=1
  for d in ${deps_of[$n]}; do norm "$d"; visit "$REPLY"; done
  order+=("$n")
}
skipped=()
for w in "${wanted[@]}"; do
  opt=; [ "${w%\?}" != "$w" ] && opt=1
  norm "${w%\?}"; n=$REPLY
  if [ -n "${path_of[$n]:-}" ]; then
    visit "$n"
  elif [ -n "${builtin[$n]:-}" ]; then
    skipped+=("$n(built-in)")
  elif [ -n "$opt" ]; then
    skipped+=("$n(absent)")
  else
    die "module $n is neither in modules.dep nor built in"
  fi
done

# --- 4. the initramfs tree ---------------------------------------------------
r=$work/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/acpi/PWRF,var/log,www/cgi-bin}
mkdir -p "$r/lib/modules/$kver"
cp "$busybox" "$r/bin/busybox"
for a in $("$busybox" --list-full); do
  [ -e "$r/$a" ] || ln -s /bin/busybox "$r/$a"
done
# Best effort (needs root); /init reopens stdio on devtmpfs's console anyway.
mknod -m 600 "$r/dev/console" c 5 1 2>/dev/null || true

: > "$r/etc/modules.order"
: > "$r/lib/modules/$kver/modules.dep"
for n in "${order[@]}"; do
  src=${path_of[$n]}
  rel=${src%.ko*}.ko
  mkdir -p "$r/lib/modules/$kver/$(dirname "$rel")"
  case "$src" in
    *.ko.xz)  xz -dc "$mdir/$src" > "$r/lib/modules/$kver/$rel" ;;
    *.ko.zst) zstd -qdc "$mdir/$src" > "$r/lib/modules/$kver/$rel" ;;
    *.ko.gz)  gzip -dc "$mdir/$src" > "$r/lib/modules/$kver/$rel" ;;
    *)        cp "$mdir/$src" "$r/lib/modules/$kver/$rel" ;;
  esac
  echo "$rel" >> "$r/etc/modules.order"
  # A modules.dep of just these modules, so busybox modprobe works in the guest.
  ds=; for d in ${deps_of[$n]}; do ds+=" ${d%.ko*}.ko"; done
  echo "$rel:$ds" >> "$r/lib/modules/$kver/modules.dep"
done
echo "$kver" > "$r/etc/kernel-version"

install -m 755 "$here/init" "$r/init"

# acpid: the power button event (PWRF) runs /etc/acpi/PWRF/00000080.
cat > "$r/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "haven-init: ACPI power button: powering off" > /dev/console
sync
poweroff -f
EOF
chmod 755 "$r/etc/acpi/PWRF/00000080"

# CGIs: the reply is sent first, the action follows 200 ms later (detached
# from httpd's pipe so the reply completes).
cat > "$r/www/cgi-bin/poweroff" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\npowering off\n'
( sleep 0.2; echo "haven-init: /cgi-bin/poweroff" > /dev/console; sync; poweroff -f ) </dev/null >/dev/null 2>&1 &
EOF
cat > "$r/www/cgi-bin/panic" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\npanicking\n'
( sleep 0.2; echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger ) </dev/null >/dev/null 2>&1 &
EOF
# A hung application: the web server stops (SIGSTOP) but its processes
# stay, and the kernel and its heartbeat go on. No reply: this CGI's own
# server stops too.
cat > "$r/www/cgi-bin/hang" <<'EOF'
#!/bin/sh
echo "haven-init: /cgi-bin/hang: stopping httpd" > /dev/console
kill -STOP $(pidof httpd)
EOF
chmod 755 "$r/www/cgi-bin/poweroff" "$r/www/cgi-bin/panic" "$r/www/cgi-bin/hang"
echo "haven test vm" > "$r/www/index.html"   # /init rewrites it with the hostname
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\n' > "$r/etc/group"

# --- 5. write the outputs ----------------------------------------------------
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
  | gzip -9n > "$work/initrd.gz"
mv -f "$work/vmlinux" "$out/vmlinux"
mv -f "$work/initrd.gz" "$out/initrd.gz"
{
  echo "kernel package: $pkg $ver ($(basename "$deb"))"
  echo "kernel release: $kver"
  echo "kernel file:    $kernel_kind"
  echo "modules (load order): ${order[*]}"
  echo "modules skipped: ${skipped[*]:-none}"
  echo "busybox: $("$busybox" 2>&1 | head -1)"
  echo "cmdline: console=ttyS0 quiet haven.hb_ms=1000 haven.hostname=NAME [haven.app=http]"
  echo "source: $(source_id)"
} > "$out/manifest.txt"

t_end=$(date +%s.%N)
cat "$out/manifest.txt"
for f in vmlinux initrd.gz; do
  printf '%-10s %9d bytes (%s)\n' "$f" "$(stat -c %s "$out/$f")" "$(du -h --apparent-size "$out/$f" | cut -f1)"
done
awk -v a="$t_start" -v b="$t_end" -v o="$out" 'BEGIN { printf "built in %.1f s into %s\n", b - a, o }'
