#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test.
# Needs root (cgroups, network namespaces) on Debian with the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the tests need root (they create cgroups and network namespaces)" >&2
  exit 1
fi

# Debian packages the tests use; installed only when missing.
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}"
fi

if ! grep -q cgroup2 /proc/self/mounts; then
  echo "scripts/test.sh: no cgroup v2 filesystem is mounted; the tests need one" >&2
  exit 1
fi

cargo build --workspace --locked --all-targets
cargo test --workspace --locked --no-fail-fast -- --test-threads="${HAVEN_TEST_THREADS:-2}"
