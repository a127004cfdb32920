//! The instance of an active-standby group on its active member's host,
//! `haven group-active`: a small process (no async runtime) in the
//! group's own cgroup. At start it runs the group's `promote` command and
//! then adds the floating address (with gratuitous ARP for IPv4); it then
//! waits. On SIGTERM or SIGINT (the agent stopping it) it removes the
//! address first, then runs `demote`, and exits 0. A failed promote, or
//! an address that cannot be added, exits non-zero: the agent counts that
//! as the instance failing (restart in place, then another host).
//!
//! Clients therefore reach the address only once the member is promoted,
//! and stop reaching it before it is demoted. The agent's stop is bounded
//! (SIGTERM, its grace, then the cgroup is killed); a kill leaves the
//! address behind on a host whose agent is gone, which is why a host is
//! declared failed only under DESIGN §2's rules (its lease expired, its
//! keeper acted, or it was fenced).

use haven_keeper::address::ip;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::process::Command;

/// Subcommand name.
pub const SUBCOMMAND: &str = "group-active";
/// The environment variable carrying the configuration (JSON).
pub const CONFIG_ENV: &str = "HAVEN_GROUP_CONFIG";
/// Set (to anything) in the environment: only run `demote` and exit (0 if
/// it succeeded). The agent runs this after a role ended without its own
/// demote (killed, crashed, or a failed promote), before the group may be
/// promoted anywhere again.
pub const DEMOTE_ONLY_ENV: &str = "HAVEN_GROUP_DEMOTE_ONLY";
/// `ip` from iproute2.
pub const IP: &str = haven_keeper::address::IP;
/// resource-agents' ARP announcer (what IPaddr2 uses).
pub const SEND_ARP: &str = "/usr/libexec/heartbeat/send_arp";

/// What the process does, from the group's spec and the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub group: String,
    /// The member active on this host (`HAVEN_MEMBER` for the commands).
    pub member: String,
    #[serde(default)]
    pub promote: Vec<String>,
    #[serde(default)]
    pub demote: Vec<String>,
    /// `ADDRESS/PREFIX`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
}

/// The process's entry. Exits: 0 after a clean demotion, 1 if it could
/// not become active.
pub fn main() -> ! {
    let cfg: Config = match std::env::var(CONFIG_ENV)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            println!("group: no usable {CONFIG_ENV}: {e}");
            std::process::exit(1);
        }
    };
    if std::env::var_os(DEMOTE_ONLY_ENV).is_some() {
        println!(
            "group {}: demoting member {} after its role ended without doing so",
            cfg.group, cfg.member
        );
        if cfg.demote.is_empty() {
            std::process::exit(0);
        }
        if let Err(e) = run(&cfg, &cfg.demote) {
            println!("group {}: demote: {e}", cfg.group);
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    // Block the stop signals before anything runs, then wait for one.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.add(nix::sys::signal::Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        println!("group: cannot block SIGTERM: {e}");
        std::process::exit(1);
    }
    let address = match activate(&cfg) {
        Ok(a) => a,
        Err(e) => {
            println!("group {}: not active on this host: {e}", cfg.group);
            std::process::exit(1);
        }
    };
    println!("group {}: active with member {}", cfg.group, cfg.member);
    let got = signals.wait();
    println!(
        "group {}: {}: demoting",
        cfg.group,
        got.map_or_else(|e| e.to_string(), |s| s.as_str().to_owned())
    );
    let mut code = 0;
    if let Some((cidr, dev)) = &address {
        if let Err(e) = ip(&["addr", "del", cidr, "dev", dev]) {
            println!("group {}: removing {cidr} from {dev}: {e}", cfg.group);
            code = 1;
        }
    }
    if !cfg.demote.is_empty() {
        if let Err(e) = run(&cfg, &cfg.demote) {
            println!("group {}: demote: {e}", cfg.group);
            code = 1;
        }
    }
    std::process::exit(code)
}

/// Promote, then the address. `Some((cidr, device))`: the address added.
fn activate(cfg: &Config) -> Result<Option<(String, String)>, String> {
    if !cfg.promote.is_empty() {
        run(cfg, &cfg.promote).map_err(|e| format!("promote: {e}"))?;
    }
    let Some(cidr) = &cfg.address else {
        return Ok(None);
    };
    let (addr, prefix) = haven_core::spec::parse_address(cidr)?;
    let dev = match &cfg.interface {
        Some(d) => d.clone(),
        None => interface_for(addr, prefix)?,
    };
    // Already there (a restart in place after a kill): it is ours.
    let present = ip(&["-o", "addr", "show", "dev", &dev])?
        .split_whitespace()
        .any(|w| w == cidr);
    if !present {
        ip(&["addr", "add", cidr, "dev", &dev])
            .map_err(|e| format!("adding {cidr} to {dev}: {e}"))?;
    }
    println!("group {}: {cidr} on {dev}", cfg.group);
    if let IpAddr::V4(v4) = addr {
        announce(&dev, &v4.to_string());
    }
    Ok(Some((cidr.clone(), dev)))
}

/// Remove the floating address `cidr` from whichever interface holds it
/// here (the agent does this once the group's instance is gone, however
/// it ended: a killed instance could not). `Ok(true)`: it was there.
pub fn release(cidr: &str) -> Result<bool, String> {
    let (addr, prefix) = haven_core::spec::parse_address(cidr)?;
    haven_keeper::address::release(&format!("{addr}/{prefix}"))
}

/// Gratuitous ARP so that neighbours update their caches at once; best
/// effort (the address works without it, after their caches expire).
fn announce(dev: &str, ip: &str) {
    if !std::path::Path::new(SEND_ARP).exists() {
        println!("group: no gratuitous ARP: {SEND_ARP} (package resource-agents) is missing");
        return;
    }
    let out = Command::new(SEND_ARP)
        .args([
            "-i", "200", "-r", "3", dev, ip, "auto", "not_used", "not_used",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => println!(
            "group: send_arp on {dev}: {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("group: send_arp: {e}"),
    }
}

/// The interface holding an address of the same family in the floating
/// address's subnet.
fn interface_for(addr: IpAddr, prefix: u8) -> Result<String, String> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let out = ip(&["-o", family, "addr", "show"])?;
    for line in out.lines() {
        // "2: eth0    inet 10.0.0.5/24 brd ... scope global eth0"
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(cidr)) = (words.get(1), words.get(3)) else {
            continue;
        };
        let Some((a, _)) = cidr.split_once('/') else {
            continue;
        };
        if let Ok(a) = a.parse::<IpAddr>() {
            if same_subnet(a, addr, prefix) && a != addr {
                let dev = dev.trim_end_matches(':');
                return Ok(dev.split('@').next().unwrap_or(dev).to_owned());
            }
        }
    }
    Err(format!(
        "no interface here has an address in {addr}/{prefix}: name one with interface = \"eth0\""
    ))
}

pub fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// A promote or demote command, with the group and member in its
/// environment; its output goes to the instance's log.
fn run(cfg: &Config, argv: &[String]) -> Result<(), String> {
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .env("HAVEN_GROUP", &cfg.group)
        .env("HAVEN_MEMBER", &cfg.member)
        .status()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} {status}", argv[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_match_by_prefix() {
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(same_subnet(a, "10.1.2.200".parse().unwrap(), 24));
        assert!(!same_subnet(a, "10.1.3.200".parse().unwrap(), 24));
        assert!(same_subnet(a, "10.1.3.200".parse().unwrap(), 16));
        assert!(!same_subnet(a, "fd00::1".parse().unwrap(), 16));
        let b: IpAddr = "fd00::1".parse().unwrap();
        assert!(same_subnet(b, "fd00::ffff".parse().unwrap(), 64));
        assert!(!same_subnet(b, "fd01::1".parse().unwrap(), 64));
    }
}
