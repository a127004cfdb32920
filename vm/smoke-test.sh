#!/usr/bin/env bash
# Boots the Haven test VM under TCG and checks what Haven relies on:
#   boot 1 "powerdown": first heartbeat line on the chardev socket, HTTP via
#           the hostfwd port on 127.0.0.1, heartbeat stops during QMP stop and
#           resumes after cont, QMP system_powerdown -> SHUTDOWN event and a
#           clean QEMU exit (status 0)
#   boot 2 "nmi":  QMP inject-nmi -> GUEST_PANICKED (QEMU runs with
#           -action panic=pause), then system_reset + cont -> heartbeats again
#   boot 3 "cgi-panic": GET /cgi-bin/panic -> GUEST_PANICKED
#   boot 4 "cgi-poweroff": GET /cgi-bin/poweroff -> SHUTDOWN (guest-shutdown),
#           QEMU exits 0
# Prints boot-to-first-heartbeat times (from QEMU's start) and QEMU's RSS.
# Everything stays on loopback; QEMU is killed by PID on exit, never by name.
#
# Usage: vm/smoke-test.sh OUT_DIR   (OUT_DIR from vm/build-test-vm.sh)
# Env:   HAVEN_VM_SMOKE_BOOTS="powerdown nmi cgi-panic cgi-poweroff" (a subset)
#        HAVEN_VM_SMOKE_KEEP=1 keeps the work dir (console logs)
set -euo pipefail

img=$(cd "${1:?usage: $0 OUT_DIR}" && pwd)
[ -f "$img/vmlinux" ] && [ -f "$img/initrd.gz" ] || { echo "smoke-test: no vmlinux/initrd.gz in $img" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "smoke-test: qemu-system-x86_64 missing (scripts/install-deps.sh)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "smoke-test: python3 missing" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/haven-vm-smoke.XXXXXX")
qpid=
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill -9 "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
  if [ -n "${HAVEN_VM_SMOKE_KEEP:-}" ]; then echo "smoke-test: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

qemu-img create -q -f qcow2 "$work/disk.qcow2" 64M

cat > "$work/check.py" <<'PYEOF'
import json, os, socket, sys, time, urllib.request

mode, work, port, t0, qpid = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
DEADLINE = t0 + 30.0          # the whole boot's checks are bounded

def left():
    return max(0.1, DEADLINE - time.time())

def fail(msg):
    print(f"FAIL {mode}: {msg}", flush=True)
    sys.exit(1)

def ok(msg):
    print(f"  ok  {mode}: {msg}", flush=True)

def connect(path):
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.time() > DEADLINE:
                fail(f"cannot connect {path}")
            time.sleep(0.02)

class Lines:
    def __init__(self, sock):
        self.s, self.buf = sock, b""
    def get(self, timeout):
        end = time.time() + timeout
        while b"\n" not in self.buf:
            rem = end - time.time()
            if rem <= 0:
                return None
            self.s.settimeout(rem)
            try:
                d = self.s.recv(4096)
            except socket.timeout:
                return None
            except ConnectionResetError:   # QEMU exited
                d = b""
            if not d:
                return ""
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

class Qmp:
    def __init__(self, path):
        self.l = Lines(connect(path))
        self.events = []
        greet = self.l.get(left())
        if not greet or "QMP" not in greet:
            fail(f"no QMP greeting: {greet!r}")
        self.cmd("qmp_capabilities")
    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.l.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            line = self.l.get(left())
            if not line:
                fail(f"QMP closed/timed out waiting for the reply to {name}")
            m = json.loads(line)
            if "event" in m:
                self.events.append(m)
            elif "return" in m:
                return m["return"]
            elif "error" in m:
                fail(f"QMP {name}: {m['error']}")
    def event(self, name, timeout):
        end = min(DEADLINE, time.time() + timeout)
        for m in self.events:
            if m["event"] == name:
                self.events.remove(m)
                return m
        while time.time() < end:
            line = self.l.get(end - time.time())
            if line is None:
                break
            if line == "":
                return None
            m = json.loads(line)
            if "event" in m:
                if m["event"] == name:
                    return m
                self.events.append(m)
        return None
    def closed(self, timeout):
        """True once QEMU closes the QMP socket (it is exiting)."""
        end = time.time() + timeout
        while time.time() < end:
            line = self.l.get(end - time.time())
            if line == "":
                return True
            if line is None:
                return False
            m = json.loads(line)
            if "event" in m:
                self.events.append(m)
        return False

def rss_kib(pid):
    """VmRSS, RssAnon, RssFile in KiB (RssFile is mostly the mmapped vmlinux:
    page cache shared by every VM booting the same file)."""
    v = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for l in f:
                k = l.split(":")[0]
                if k in ("VmRSS", "RssAnon", "RssFile"):
                    v[k] = int(l.split()[1])
    except OSError:
        pass
    return v.get("VmRSS", 0), v.get("RssAnon", 0), v.get("RssFile", 0)

def http(path, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")

def http_retry(path):
    last = None
    while time.time() < DEADLINE:
        try:
            return http(path, timeout=min(3.0, left()))
        except Exception as e:   # the guest may still be starting httpd
            last = e
            time.sleep(0.1)
    fail(f"HTTP {path}: {last}")

# Heartbeat socket first (QEMU creates both sockets before the guest runs).
hb = Lines(connect(f"{work}/hb.sock"))
qmp = Qmp(f"{work}/qmp.sock")
first = hb.get(left())
t_first = time.time()
if not first:
    fail("no heartbeat line")
if first != "haven-hb 1":
    fail(f"first heartbeat line is {first!r}, expected 'haven-hb 1'")
boot_s = t_first - t0
ok(f"first heartbeat {first!r} {boot_s:.2f} s after QEMU started")
print(f"BOOT_TO_HB {boot_s:.3f}", flush=True)

status, body = http_retry("/")
name = f"smoke-{mode}"
if status != 200 or f"haven test vm {name}" not in body:
    fail(f"HTTP / answered {status} {body!r}")
ok(f"HTTP / on 127.0.0.1:{port} -> {body.strip()!r}")

if mode == "powerdown":
    second = hb.get(3.0)
    if second != "haven-hb 2":
        fail(f"second heartbeat {second!r}")
    ok(f"second heartbeat {second!r} {time.time() - t_first:.2f} s after the first")
    time.sleep(1.5)
    while hb.get(0.05):   # drain
        pass
    r, anon, fil = rss_kib(qpid)
    print(f"QEMU_RSS_KIB {r} {anon} {fil}", flush=True)
    ok(f"QEMU RSS {r / 1024:.0f} MiB (anonymous {anon / 1024:.0f} MiB, file-backed {fil / 1024:.0f} MiB)")
    # A hang: stop -> no heartbeat; cont -> heartbeats again.
    qmp.cmd("stop")
    line = hb.get(2.5)
    if line:
        fail(f"heartbeat {line!r} while stopped")
    qmp.cmd("cont")
    line = hb.get(3.0)
    if not line or not line.startswith("haven-hb "):
        fail(f"no heartbeat after cont: {line!r}")
    ok(f"stop: no heartbeat for 2.5 s; cont: {line!r}")
    t = time.time()
    qmp.cmd("system_powerdown")
    ev = qmp.event("SHUTDOWN", 15)
    if not ev:
        fail(f"no SHUTDOWN event after system_powerdown; events {qmp.events}")
    ok(f"system_powerdown -> SHUTDOWN {ev['data']} in {time.time() - t:.2f} s")
    if not qmp.closed(10):
        fail("QEMU did not close QMP after SHUTDOWN")
elif mode == "nmi":
    t = time.time()
    qmp.cmd("inject-nmi")
    ev = qmp.event("GUEST_PANICKED", 10)
    if not ev:
        fail(f"no GUEST_PANICKED after inject-nmi; events {qmp.events}")
    ok(f"inject-nmi -> GUEST_PANICKED {ev['data']} in {time.time() - t:.2f} s")
    st = qmp.cmd("query-status")
    ok(f"status after the panic: {st}")
    # The driver's reset path: system_reset (+ cont when paused).
    t = time.time()
    qmp.cmd("system_reset")
    if not st.get("running", True):
        qmp.cmd("cont")
    while True:   # lines written before the panic may still be buffered
        line = hb.get(left())
        if not line:
            fail(f"no heartbeat after system_reset: {line!r}")
        if line == "haven-hb 1":
            break
    ok(f"system_reset -> heartbeat {line!r} again {time.time() - t:.2f} s later")
    qmp.cmd("quit")
    qmp.closed(10)
elif mode == "cgi-panic":
    t = time.time()
    status, body = http("/cgi-bin/panic")
    ok(f"/cgi-bin/panic answered {status} {body.strip()!r}")
    ev = qmp.event("GUEST_PANICKED", 10)
    if not ev:
        fail(f"no GUEST_PANICKED after /cgi-bin/panic; events {qmp.events}")
    ok(f"/cgi-bin/panic -> GUEST_PANICKED {ev['data']} in {time.time() - t:.2f} s")
    qmp.cmd("quit")
    qmp.closed(10)
elif mode == "cgi-poweroff":
    t = time.time()
    status, body = http("/cgi-bin/poweroff")
    ok(f"/cgi-bin/poweroff answered {status} {body.strip()!r}")
    ev = qmp.event("SHUTDOWN", 10)
    if not ev:
        fail(f"no SHUTDOWN after /cgi-bin/poweroff; events {qmp.events}")
    if ev["data"].get("reason") != "guest-shutdown":
        fail(f"SHUTDOWN reason {ev['data']}")
    ok(f"/cgi-bin/poweroff -> SHUTDOWN {ev['data']} in {time.time() - t:.2f} s")
    if not qmp.closed(10):
        fail("QEMU did not close QMP after SHUTDOWN")
else:
    fail("unknown mode")
PYEOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

boots=${HAVEN_VM_SMOKE_BOOTS:-powerdown nmi cgi-panic cgi-poweroff}
times=() rss=() failed=0
for mode in $boots; do
  d=$work/$mode
  mkdir -p "$d"
  port=$(free_port)
  echo "smoke-test: boot '$mode' (HTTP on 127.0.0.1:$port)"
  t0=$(date +%s.%N)
  qemu-system-x86_64 \
    -M pc -accel tcg -m 128 -smp 1 -nodefaults -no-user-config -display none \
    -kernel "$img/vmlinux" -initrd "$img/initrd.gz" \
    -append "console=ttyS0 quiet haven.hb_ms=1000 haven.hostname=smoke-$mode" \
    -chardev "socket,id=qmp,path=$d/qmp.sock,server=on,wait=off" -mon chardev=qmp,mode=control \
    -device virtio-serial-pci \
    -chardev "socket,id=hb,path=$d/hb.sock,server=on,wait=off" \
    -device virtserialport,chardev=hb,name=org.haven.heartbeat \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:80" -device virtio-net-pci,netdev=n0 \
    -device pvpanic -action panic=pause \
    -drive "file=$work/disk.qcow2,if=virtio,format=qcow2" \
    -serial "file:$d/console.log" &
  qpid=$!
  if out=$(python3 "$work/check.py" "$mode" "$d" "$port" "$t0" "$qpid" 2>&1); then rc=0; else rc=$?; fi
  echo "$out" | grep -v -e '^BOOT_TO_HB' -e '^QEMU_RSS_KIB' || true
  t=$(echo "$out" | awk '$1 == "BOOT_TO_HB" { print $2 }')
  [ -n "$t" ] && times+=("$t")
  r=$(echo "$out" | awk '$1 == "QEMU_RSS_KIB" { print $2 " " $3 " " $4 }')
  [ -n "$r" ] && rss+=("$r")
  # QEMU must exit by itself (powerdown/poweroff/quit); bounded wait.
  for _ in $(seq 100); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$qpid" 2>/dev/null; then
    echo "FAIL $mode: QEMU still running; killing PID $qpid"
    kill -9 "$qpid"; wait "$qpid" 2>/dev/null || true; rc=1
  else
    if wait "$qpid"; then qrc=0; else qrc=$?; fi
    if [ $rc = 0 ]; then
      if [ $qrc = 0 ]; then echo "  ok  $mode: QEMU exited with status 0"
      else echo "FAIL $mode: QEMU exited with status $qrc"; rc=1; fi
    fi
  fi
  qpid=
  if [ $rc != 0 ]; then
    failed=$((failed + 1))
    echo "--- console.log of '$mode' ---"; tail -n 30 "$d/console.log" 2>/dev/null || true
  fi
done

n=$(echo $boots | wc -w)
if [ ${#times[@]} -gt 0 ]; then
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "boot to first heartbeat: median %.2f s (min %.2f, max %.2f, %d boots)\n", m, a[1], a[NR], NR }'
fi
if [ ${#rss[@]} -gt 0 ]; then
  set -- ${rss[0]}
  echo "QEMU RSS (-m 128, 2.5 s after the first heartbeat): $(($1 / 1024)) MiB, of which anonymous $(($2 / 1024)) MiB and file-backed (page cache: mostly the mmapped vmlinux, shared between VMs) $(($3 / 1024)) MiB"
fi
echo "$((n - failed)) passed, $failed failed"
[ $failed = 0 ]
