#!/usr/bin/env bash
# The whole test suite: installs what the tests need (scripts/install-deps.sh:
# iproute2, nftables, QEMU, busybox-static, …), builds the test VM, then runs
# every test. Needs root (cgroups, network namespaces) on Debian with the Rust
# toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the tests need root (they create cgroups and network namespaces)" >&2
  exit 1
fi
if ! grep -q cgroup2 /proc/self/mounts; then
  echo "scripts/test.sh: no cgroup v2 filesystem is mounted; the tests need one" >&2
  exit 1
fi

scripts/install-deps.sh
for tool in ip nft qemu-system-x86_64 qemu-img busybox cpio python3; do
  command -v "$tool" >/dev/null || { echo "scripts/test.sh: $tool is still missing after scripts/install-deps.sh" >&2; exit 1; }
done

# The test VM (Debian kernel + busybox initramfs), built once.
export HAVEN_TEST_VM_DIR=${HAVEN_TEST_VM_DIR:-$PWD/target/test-vm}
if [ ! -s "$HAVEN_TEST_VM_DIR/vmlinux" ] || [ ! -s "$HAVEN_TEST_VM_DIR/initrd.gz" ]; then
  vm/build-test-vm.sh "$HAVEN_TEST_VM_DIR"
fi

# One clean build, not an edited one: incremental caches would double the
# debug target's size on disk (and CI has a bounded disk).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
free_kib=$(df -Pk "${CARGO_TARGET_DIR:-target}/.." 2>/dev/null | awk 'NR==2 {print $4}')
if [ -n "${free_kib:-}" ] && [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: only $((free_kib / 1024)) MiB free where the build goes; a clean build with the simulator and the fuzz targets needs about 8 GiB" >&2
fi
cargo build --workspace --locked --all-targets
# Unit and loopback tests in parallel; the multi-host test bed one test at a
# time (its timing is real, and the machine has two cores).
rc=0
cargo test --workspace --locked --no-fail-fast --exclude haven-testbed -- --test-threads="${HAVEN_TEST_THREADS:-2}" || rc=1
cargo test -p haven-testbed --locked --no-fail-fast -- --test-threads=1 || rc=1
# The whole cluster in the deterministic simulator: 500 random seeds of two
# simulated minutes each (1,000 cluster-minutes, about 35 s; the simulator
# and the core it runs are optimized in the test build, see Cargo.toml);
# each failing seed is printed with the command that replays it. A fixed
# window of seeds, so that the gate is the same on every run: explore
# other seeds by hand (`haven-sim --seeds N --first S`), and add each seed
# that finds a bug as a test in crates/haven-sim/tests.
cargo run --locked -q -p haven-sim -- --seeds 500 --first 1 --minutes 2 || rc=1
# The request decoders and token parsers under libFuzzer, bounded (about
# 4 minutes with its build on two cores; scripts/fuzz.sh says how).
scripts/fuzz.sh "${HAVEN_FUZZ_SECONDS:-10}" || rc=1
exit $rc
