//! QEMU command lines for `vm` workloads, and where KVM really works.
//!
//! A VM instance is a `qemu-system-x86_64` process that the process driver
//! runs in its own cgroup like any other; this module only decides its
//! argv: machine, accelerator, memory, disks, direct kernel boot, network,
//! the QMP sockets (one for the agent, one for operators and tests), the
//! `org.haven.heartbeat` virtio-serial port, and `pvpanic` so a guest panic
//! reaches QMP as `GUEST_PANICKED`; and, for a VM that names a `user`, the
//! privilege drop QEMU makes once its files are open.

use crate::identity::Identity;
use haven_core::model::{Accel, GuestHeartbeat, VmNetwork, VmSpec};
use std::path::{Path, PathBuf};

pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
pub const HEARTBEAT_PORT: &str = "org.haven.heartbeat";
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Sockets and files of one VM instance, under its run directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
    /// QMP for the agent.
    pub qmp: PathBuf,
    /// QMP for operators and tests (a QMP socket serves one client at a time).
    pub qmp_ops: PathBuf,
    /// The heartbeat virtio-serial port's host end.
    pub heartbeat: PathBuf,
    /// The guest agent's port (heartbeat = "qemu-guest-agent").
    pub guest_agent: PathBuf,
}

impl VmPaths {
    pub fn new(dir: &Path) -> VmPaths {
        VmPaths {
            dir: dir.to_owned(),
            qmp: dir.join("qmp.sock"),
            qmp_ops: dir.join("qmp-ops.sock"),
            heartbeat: dir.join("heartbeat.sock"),
            guest_agent: dir.join("qga.sock"),
        }
    }
}

/// KVM is used only where it really works: `/dev/kvm` opens and the CPU
/// exposes hardware virtualization (vmx/svm). A `/dev/kvm` backed by a
/// software hypervisor without them (as on this project's CI machines,
/// where stock guest kernels fail under it) is not trusted.
pub fn kvm_usable() -> bool {
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let hw = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    dev_ok && hw
}

pub fn resolve_accel(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        Accel::Auto if kvm_usable() => "kvm",
        Accel::Auto => "tcg",
    }
}

/// The argv (without the program) of one VM instance.
pub fn qemu_args(
    name: &str,
    vm: &VmSpec,
    vcpus: u32,
    memory_mib: u64,
    paths: &VmPaths,
) -> Vec<String> {
    let mut a: Vec<String> = vec![];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("{name},debug-threads=on")]);
    push(&["-M", "pc", "-accel", resolve_accel(vm.accel)]);
    push(&["-m", &memory_mib.to_string(), "-smp", &vcpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // The guest's serial console is QEMU's stdout: with QEMU's own
    // messages, it goes to the workload's size-capped log (`logfile.rs`).
    push(&["-chardev", "stdio,id=console,signal=off"]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            paths.qmp.display()
        ),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmpops,path={},server=on,wait=off",
            paths.qmp_ops.display()
        ),
    ]);
    push(&["-mon", "chardev=qmpops,mode=control"]);
    // A guest panic pauses the VM (QEMU's default would exit) so that VM
    // monitoring decides: reset in place, or fail over.
    push(&["-device", "pvpanic", "-action", "panic=pause"]);
    match vm.heartbeat {
        GuestHeartbeat::Haven => {
            push(&["-device", "virtio-serial-pci,id=vser0"]);
            push(&[
                "-chardev",
                &format!(
                    "socket,id=hb,path={},server=on,wait=off",
                    paths.heartbeat.display()
                ),
            ]);
            push(&[
                "-device",
                &format!("virtserialport,bus=vser0.0,chardev=hb,name={HEARTBEAT_PORT}"),
            ]);
        }
        GuestHeartbeat::QemuGuestAgent => {
            push(&["-device", "virtio-serial-pci,id=vser0"]);
            push(&[
                "-chardev",
                &format!(
                    "socket,id=qga,path={},server=on,wait=off",
                    paths.guest_agent.display()
                ),
            ]);
            push(&[
                "-device",
                &format!("virtserialport,bus=vser0.0,chardev=qga,name={GUEST_AGENT_PORT}"),
            ]);
        }
        GuestHeartbeat::None => {}
    }
    for (i, disk) in vm.disks.iter().enumerate() {
        let format = if disk.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        push(&[
            "-drive",
            &format!("file={disk},if=virtio,format={format},cache=none,aio=threads,id=disk{i}"),
        ]);
    }
    if let Some(k) = &vm.kernel {
        push(&["-kernel", k]);
    }
    if let Some(i) = &vm.initrd {
        push(&["-initrd", i]);
    }
    if let Some(ap) = &vm.append {
        push(&["-append", ap]);
    }
    match &vm.network {
        VmNetwork::None => {}
        VmNetwork::User { forward } => {
            let mut netdev = "user,id=net0".to_string();
            for f in forward {
                netdev.push_str(&format!(",hostfwd={f}"));
            }
            push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
        }
        VmNetwork::Bridge { bridge, mac } => {
            push(&["-netdev", &format!("bridge,id=net0,br={bridge}")]);
            let dev = match mac {
                Some(m) => format!("virtio-net-pci,netdev=net0,mac={m}"),
                None => "virtio-net-pci,netdev=net0".to_string(),
            };
            push(&["-device", &dev]);
        }
    }
    a
}

/// QEMU's own privilege drop for a VM that names a `user`: QEMU starts as
/// the agent, opens everything it is given (disks, kernel, initrd, its
/// sockets in the instance's run dir, `/dev/kvm`, a bridge's tap), then
/// switches to this uid and gid, with no other group, before the guest
/// runs. So the guest-facing code runs unprivileged while no file of the VM
/// needs to change owner, and the sockets stay the agent's. Nothing for
/// root (the agent's identity) or without a user.
pub fn run_as_args(identity: Option<&Identity>) -> Vec<String> {
    match identity {
        Some(id) if !id.is_root() => {
            vec!["-run-with".into(), format!("user={}:{}", id.uid, id.gid)]
        }
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::model::VmMonitoring;

    #[test]
    fn argv_has_the_sockets_devices_and_disks() {
        let vm = VmSpec {
            disks: vec!["/ds/a.qcow2".into()],
            kernel: Some("/ds/vmlinux".into()),
            initrd: Some("/ds/initrd.gz".into()),
            append: Some("console=ttyS0".into()),
            network: VmNetwork::User {
                forward: vec!["tcp:127.0.0.1:8081-:80".into()],
            },
            heartbeat: GuestHeartbeat::Haven,
            accel: Accel::Tcg,
            monitoring: VmMonitoring::default(),
        };
        let a = qemu_args("db1", &vm, 2, 256, &VmPaths::new(Path::new("/run/x"))).join(" ");
        for needle in [
            "-accel tcg",
            "-m 256 -smp 2",
            "path=/run/x/qmp.sock,server=on,wait=off",
            "name=org.haven.heartbeat",
            "file=/ds/a.qcow2,if=virtio,format=qcow2",
            "-kernel /ds/vmlinux -initrd /ds/initrd.gz -append console=ttyS0",
            "hostfwd=tcp:127.0.0.1:8081-:80",
            "-device pvpanic",
            "-chardev stdio,id=console,signal=off -serial chardev:console",
        ] {
            assert!(a.contains(needle), "{needle} missing from {a}");
        }
    }

    #[test]
    fn qemu_drops_to_the_user_by_ids_and_root_runs_as_it_is() {
        let id = |uid, gid| Identity {
            uid,
            gid,
            groups: vec![gid],
            name: None,
            home: None,
        };
        assert_eq!(
            run_as_args(Some(&id(999, 994))),
            vec!["-run-with".to_string(), "user=999:994".to_string()]
        );
        assert!(run_as_args(Some(&id(0, 0))).is_empty());
        assert!(run_as_args(None).is_empty());
    }
}
