#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, only those that
# are missing: iproute2, nftables, python3, and for VM workloads QEMU
# (qemu-system-x86 from bookworm-backports, matching the preinstalled
# qemu-utils), busybox-static, cpio and xz-utils (to build the test VM).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v python3 >/dev/null || need+=(python3)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
need_qemu=0
command -v qemu-system-x86_64 >/dev/null || need_qemu=1
[ ${#need[@]} -eq 0 ] && [ $need_qemu = 0 ] && exit 0

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -q)
if [ $need_qemu = 1 ] && . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # qemu-system-x86 must come from bookworm-backports: the preinstalled
  # qemu-utils is from there and bookworm's qemu-system conflicts with it.
  # Same URI and keyring as the machine's own Debian sources.
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    src=$(grep -rls "Suites: bookworm" /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
    uri=$(awk '/^URIs:/{print $2; exit}' "$src" 2>/dev/null || true)
    key=$(awk '/^Signed-By:/{print $2; exit}' "$src" 2>/dev/null || true)
    uri=${uri:-http://deb.debian.org/debian}
    key=${key:-/usr/share/keyrings/debian-archive-keyring.gpg}
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' "$uri" "$key" \
      > /etc/apt/sources.list.d/haven-bookworm-backports.sources
  fi
fi
apt-get "${apt_opts[@]}" update
[ ${#need[@]} -eq 0 ] || apt-get "${apt_opts[@]}" install -y --no-install-recommends "${need[@]}"
if [ $need_qemu = 1 ]; then
  if grep -rqs "bookworm-backports" /etc/apt/sources.list.d/ /etc/apt/sources.list; then
    apt-get "${apt_opts[@]}" install -y --no-install-recommends -t bookworm-backports qemu-system-x86
  else
    apt-get "${apt_opts[@]}" install -y --no-install-recommends qemu-system-x86
  fi
fi
