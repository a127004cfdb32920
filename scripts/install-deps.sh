#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, only those that
# are missing: iproute2, nftables, python3, and for VM workloads QEMU
# (qemu-system-x86 from bookworm-backports, matching the preinstalled
# qemu-utils), busybox-static, cpio and xz-utils (to build the test VM), and
# resource-agents (the OCF agents the OCF driver's tests run: Dummy, …).
#
# APT sources: only the machine's own. When bookworm-backports is needed and
# not configured, its source is derived from the machine's Debian bookworm
# source (same URI, same Signed-By keyring) and written to
# /etc/apt/sources.list.d/haven-bookworm-backports.sources; with no such
# source the script stops and says so (it never names a mirror itself).
#
#   install-deps.sh                     install what is missing (root)
#   install-deps.sh --backports-source  print the source it would write, or
#                                       fail as it would; changes nothing
#
# HAVEN_APT_DIR (default /etc/apt) is where APT's sources are read from.
set -euo pipefail

apt_dir=${HAVEN_APT_DIR:-/etc/apt}
backports_file=$apt_dir/sources.list.d/haven-bookworm-backports.sources

# The APT source files APT reads, one per line (missing ones skipped).
source_files() {
  local f
  for f in "$apt_dir/sources.list" "$apt_dir"/sources.list.d/*.list "$apt_dir"/sources.list.d/*.sources; do
    [ -f "$f" ] && printf '%s\n' "$f"
  done
  return 0
}

# Reads every APT source entry (one-line and deb822 formats) and, in mode
# `has`, succeeds if an enabled `deb` entry serves bookworm-backports; in
# mode `derive`, prints a deb822 stanza for bookworm-backports with the URI
# and Signed-By (a keyring path, or an inline key block) of the first
# enabled `deb` entry for Debian bookworm, and fails if there is none.
# mawk-compatible (Debian's default awk).
scan_sources() {
  local files
  mapfile -t files < <(source_files)
  [ ${#files[@]} -gt 0 ] || return 1
  awk -v mode="$1" '
    function reset() { types = ""; suites = ""; uri = ""; signed = ""; enabled = ""; field = "" }
    function has(list, word) { return (" " list " ") ~ ("[ \t]" word "[ \t]") }
    function entry(t, s, u, k, e) {
      if (!has(t, "deb") || e == "no" || u == "") return
      if (mode == "has" && has(s, "bookworm-backports")) { found = 1; exit }
      if (mode == "derive" && has(s, "bookworm")) {
        printf "Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\n", u
        if (k != "") printf "Signed-By: %s\n", k
        found = 1; exit
      }
    }
    function end_stanza() { entry(types, suites, uri, signed, enabled); reset() }
    BEGIN { reset() }
    FNR == 1 && NR > 1 { end_stanza() }
    # One-line format: deb [opt=value ...] URI SUITE COMPONENT...
    FILENAME !~ /\.sources$/ {
      if ($1 != "deb") next
      i = 2; key = ""
      if ($2 ~ /^\[/) {
        while (i <= NF) {
          opt = $i; gsub(/[\[\]]/, "", opt)
          if (tolower(opt) ~ /^signed-by=/) key = substr(opt, 11)
          if ($i ~ /\]$/) { i++; break }
          i++
        }
      }
      entry("deb", $(i + 1), $i, key, "")
      next
    }
    # deb822 format: stanzas of "Field: value", continuation lines indented.
    /^#/ { next }
    /^[ \t]*$/ { end_stanza(); next }
    /^[ \t]/ { if (field == "signed-by") signed = signed "\n" $0; next }
    {
      colon = index($0, ":"); if (colon == 0) next
      field = tolower(substr($0, 1, colon - 1)); value = substr($0, colon + 1)
      sub(/[ \t]*#.*$/, "", value); sub(/^[ \t]+/, "", value); sub(/[ \t]+$/, "", value)
      if (field == "types") types = value
      else if (field == "suites") suites = value
      else if (field == "uris") { split(value, u, /[ \t]+/); uri = u[1] }
      else if (field == "signed-by") signed = value
      else if (field == "enabled") enabled = tolower(value)
    }
    END { if (!found) end_stanza(); exit found ? 0 : 1 }
  ' "${files[@]}"
}

has_backports() { scan_sources has; }
backports_stanza() { scan_sources derive; }

no_debian_source() {
  cat >&2 <<EOF
install-deps.sh: qemu-system-x86 must come from bookworm-backports, and no APT
source of this machine serves Debian bookworm to take its URI and keyring from
(looked for a \`deb\` entry with suite \`bookworm\` in $apt_dir/sources.list and
$apt_dir/sources.list.d/*.list, *.sources). Add this machine's Debian mirror
as an APT source, or add a bookworm-backports source yourself, then run this
again.
EOF
  exit 1
}

if [ "${1:-}" = --backports-source ]; then
  if has_backports; then
    echo "# bookworm-backports is already an APT source of this machine"
    exit 0
  fi
  backports_stanza || no_debian_source
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: install-deps.sh [--backports-source]" >&2
  exit 2
fi

[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root" >&2; exit 1; }

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v python3 >/dev/null || need+=(python3)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
[ -x /usr/lib/ocf/resource.d/heartbeat/Dummy ] || need+=(resource-agents)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
need_qemu=0
command -v qemu-system-x86_64 >/dev/null || need_qemu=1
[ ${#need[@]} -eq 0 ] && [ $need_qemu = 0 ] && exit 0

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -q)
backports=0
if [ $need_qemu = 1 ] && . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  # qemu-system-x86 must come from bookworm-backports: the preinstalled
  # qemu-utils is from there and bookworm's qemu-system conflicts with it.
  backports=1
  if ! has_backports; then
    stanza=$(backports_stanza) || no_debian_source
    printf '%s\n' "$stanza" > "$backports_file.tmp"
    mv "$backports_file.tmp" "$backports_file"
    echo "install-deps.sh: added $backports_file (from this machine's Debian source)"
  fi
fi
apt-get "${apt_opts[@]}" update
[ ${#need[@]} -eq 0 ] || apt-get "${apt_opts[@]}" install -y --no-install-recommends "${need[@]}"
if [ $need_qemu = 1 ]; then
  if [ $backports = 1 ]; then
    apt-get "${apt_opts[@]}" install -y --no-install-recommends -t bookworm-backports qemu-system-x86
  else
    apt-get "${apt_opts[@]}" install -y --no-install-recommends qemu-system-x86
  fi
fi
