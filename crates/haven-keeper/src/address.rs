//! Floating addresses a host must give up when its lease lapses: a group's
//! role removes its address itself when it stops, but a role killed
//! outright (past its bound, or by the OOM killer) cannot, and when the
//! agent is gone too only the keeper is left to do it (DESIGN.md §2: the
//! address must be gone before the coordinator places the role
//! elsewhere). The agent names each role's address in the keeper's
//! policy (`address NAME ADDRESS/PREFIX`); the agent removes addresses
//! with the same function while it runs.

use std::process::Command;

/// `ip` from iproute2.
pub const IP: &str = "/usr/sbin/ip";
/// Longest `ADDRESS/PREFIX` taken (an IPv6 address with a prefix is 43).
pub const ADDRESS_LEN_MAX: usize = 64;

/// Whether `cidr` looks like `ADDRESS/PREFIX` (hex digits, `.`, `:` and
/// one `/`), so that it can go on `ip`'s command line. The agent checked
/// it properly when it was applied; this only keeps a corrupt policy out.
pub fn is_cidr(cidr: &str) -> bool {
    cidr.len() <= ADDRESS_LEN_MAX
        && cidr.bytes().filter(|&b| b == b'/').count() == 1
        && !cidr.starts_with('/')
        && !cidr.ends_with('/')
        && cidr
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b'/'))
}

/// Remove `cidr` (`ADDRESS/PREFIX`) from whichever interface of this
/// network namespace holds it. `Ok(true)`: it was there.
pub fn release(cidr: &str) -> Result<bool, String> {
    if !is_cidr(cidr) {
        return Err(format!("{cidr:?} is not ADDRESS/PREFIX"));
    }
    let addr = cidr.split('/').next().unwrap_or(cidr);
    let out = ip(&["-o", "addr", "show", "to", addr])?;
    let mut removed = false;
    for line in out.lines() {
        let Some(dev) = line.split_whitespace().nth(1) else {
            continue;
        };
        let dev = dev.trim_end_matches(':');
        // `ip` shows `dev@peer` for a veth.
        let dev = dev.split('@').next().unwrap_or(dev);
        ip(&["addr", "del", cidr, "dev", dev])?;
        removed = true;
    }
    Ok(removed)
}

/// Run `ip` with `args`; its output, or what went wrong.
pub fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new(IP)
        .args(args)
        .output()
        .map_err(|e| format!("{IP}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_address_and_prefix_is_taken() {
        for good in ["10.0.0.9/24", "fd00::1/64", "2001:db8::a:b/128"] {
            assert!(is_cidr(good), "{good}");
        }
        for bad in [
            "",
            "10.0.0.9",
            "/24",
            "10.0.0.9/",
            "10.0.0.9/24/1",
            "10.0.0.9/24 dev lo",
            "-h/24",
            &format!("{}/24", "1".repeat(70)),
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }
}
