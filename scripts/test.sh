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
[ -x /usr/lib/ocf/resource.d/heartbeat/Dummy ] || { echo "scripts/test.sh: the OCF agent Dummy (package resource-agents) is still missing after scripts/install-deps.sh" >&2; exit 1; }

# The test VM (Debian kernel + busybox initramfs), built once.
export HAVEN_TEST_VM_DIR=${HAVEN_TEST_VM_DIR:-$PWD/target/test-vm}
# Built again when vm/init or the build script changed since.
if [ ! -s "$HAVEN_TEST_VM_DIR/vmlinux" ] || [ ! -s "$HAVEN_TEST_VM_DIR/initrd.gz" ] \
  || ! grep -qx "source: $(vm/build-test-vm.sh --source-id)" "$HAVEN_TEST_VM_DIR/manifest.txt" 2>/dev/null; then
  vm/build-test-vm.sh "$HAVEN_TEST_VM_DIR"
fi

# One clean build, not an edited one: incremental caches would double the
# debug target's size on disk (and CI has a bounded disk).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
free_kib=$(df -Pk "${CARGO_TARGET_DIR:-target}/.." 2>/dev/null | awk 'NR==2 {print $4}')
if [ -n "${free_kib:-}" ] && [ "$free_kib" -lt $((8 * 1024 * 1024)) ]; then
  echo "scripts/test.sh: warning: only $((free_kib / 1024)) MiB free where the build goes; a clean build with the simulator and the fuzz targets needs about 8 GiB" >&2
fi
# Each step's output goes to the terminal and to a log; the run ends with a
# summary naming every failed step and test, so the last lines of a CI log
# say what broke.
logs="${CARGO_TARGET_DIR:-target}/test-logs"
rm -rf "$logs" && mkdir -p "$logs"
failed=()
step() {
  local name=$1; shift
  echo "==> $name: $*"
  if "$@" 2>&1 | tee "$logs/$name.log"; then
    echo "==> $name: passed"
  else
    echo "==> $name: FAILED"
    failed+=("$name")
  fi
}

step build cargo build --workspace --locked --all-targets
# Unit and loopback tests in parallel; the multi-host test bed one test at a
# time (its timing is real, and the machine has two cores).
step tests cargo test --workspace --locked --no-fail-fast --exclude haven-testbed -- --test-threads="${HAVEN_TEST_THREADS:-2}"
step testbed cargo test -p haven-testbed --locked --no-fail-fast -- --test-threads=1
# The whole cluster in the deterministic simulator: 500 random seeds of two
# simulated minutes each (1,000 cluster-minutes, about 35 s; the simulator
# and the core it runs are optimized in the test build, see Cargo.toml);
# each failing seed is printed with the command that replays it. A fixed
# window of seeds, so that the gate is the same on every run: explore
# other seeds by hand (`haven-sim --seeds N --first S`), and add each seed
# that finds a bug as a test in crates/haven-sim/tests.
step simulator cargo run --locked -q -p haven-sim -- --seeds 500 --first 1 --minutes 2
# The request decoders and token parsers under libFuzzer, bounded (about
# 4 minutes with its build on two cores; scripts/fuzz.sh says how).
step fuzz scripts/fuzz.sh "${HAVEN_FUZZ_SECONDS:-10}"

echo
echo "==> summary (logs in $logs/)"
if [ ${#failed[@]} -eq 0 ]; then
  echo "every step passed: build, tests, testbed, simulator, fuzz"
  exit 0
fi
for name in "${failed[@]}"; do
  echo "step $name FAILED"
  # The failed tests by name, then each one's own output, cut short.
  grep -E '^test .* \.\.\. FAILED$' "$logs/$name.log" | sed 's/^/  /' || true
  awk '/^---- .* stdout ----$/ {n = 0; show = 1}
       show && n < 25 {print "  | " $0; n++}
       /^failures:$/ && seen++ {show = 0}' "$logs/$name.log" | head -n 150 || true
  grep -E -A1 '^error|^FAILED seed' "$logs/$name.log" | head -n 20 | sed 's/^/  /' || true
done
exit 1
