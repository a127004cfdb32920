//! Network faults of one host, rendered as an nftables ruleset for the
//! host's own namespace. Rules match only `eth0` (the host's link to the
//! bridge), so traffic to the host's own address, which goes over `lo`,
//! is never cut: a test can still ask a partitioned host for its view.
//!
//! Each change replaces the host's whole table in one `nft -f` transaction.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The nftables table the test bed owns in each host namespace.
pub const TABLE: &str = "haven_testbed";
/// The host's interface towards the bridge.
pub const LINK: &str = "eth0";

/// What is currently done to one host's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetFaults {
    /// Drop everything in and out on the link.
    pub partitioned: bool,
    /// Peers whose packets are dropped in both directions (a split).
    pub blocked_peers: BTreeSet<Ipv4Addr>,
    /// Drop this percentage of packets at random, in and out (0..=100).
    pub loss_percent: u32,
}

impl NetFaults {
    pub fn is_clear(&self) -> bool {
        !self.partitioned && self.blocked_peers.is_empty() && self.loss_percent == 0
    }

    /// An `nft -f` script that replaces the test bed's table with these
    /// rules (or just removes it when there are none). Declaring the table
    /// before deleting it makes the delete succeed when it does not exist.
    pub fn ruleset(&self) -> String {
        let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
        if self.is_clear() {
            return s;
        }
        let _ = writeln!(s, "table inet {TABLE} {{");
        for (chain, iface, peer) in [
            ("input", "iifname", "saddr"),
            ("output", "oifname", "daddr"),
        ] {
            let _ = writeln!(s, "  chain {chain} {{");
            let _ = writeln!(s, "    type filter hook {chain} priority 0; policy accept;");
            if self.partitioned {
                let _ = writeln!(s, "    {iface} \"{LINK}\" drop");
            }
            if !self.blocked_peers.is_empty() {
                let peers: Vec<String> = self.blocked_peers.iter().map(|p| p.to_string()).collect();
                let _ = writeln!(
                    s,
                    "    {iface} \"{LINK}\" ip {peer} {{ {} }} drop",
                    peers.join(", ")
                );
            }
            if self.loss_percent >= 100 {
                // numgen's range is 0..=99: total loss is a plain drop.
                let _ = writeln!(s, "    {iface} \"{LINK}\" drop");
            } else if self.loss_percent > 0 {
                let _ = writeln!(
                    s,
                    "    {iface} \"{LINK}\" numgen random mod 100 < {} drop",
                    self.loss_percent
                );
            }
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(s, "}}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_faults_only_remove_the_table() {
        let s = NetFaults::default().ruleset();
        assert_eq!(
            s,
            format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
        );
    }

    #[test]
    fn partition_drops_both_directions_on_the_link() {
        let s = NetFaults {
            partitioned: true,
            ..Default::default()
        }
        .ruleset();
        assert!(s.contains("iifname \"eth0\" drop"), "{s}");
        assert!(s.contains("oifname \"eth0\" drop"), "{s}");
        assert!(!s.contains("numgen"), "{s}");
    }

    #[test]
    fn split_and_loss_render_sets_and_numgen() {
        let s = NetFaults {
            partitioned: false,
            blocked_peers: [
                "10.199.0.12".parse().unwrap(),
                "10.199.0.13".parse().unwrap(),
            ]
            .into_iter()
            .collect(),
            loss_percent: 5,
        }
        .ruleset();
        assert!(
            s.contains("iifname \"eth0\" ip saddr { 10.199.0.12, 10.199.0.13 } drop"),
            "{s}"
        );
        assert!(
            s.contains("oifname \"eth0\" ip daddr { 10.199.0.12, 10.199.0.13 } drop"),
            "{s}"
        );
        assert!(
            s.contains("iifname \"eth0\" numgen random mod 100 < 5 drop"),
            "{s}"
        );
        assert!(
            s.contains("oifname \"eth0\" numgen random mod 100 < 5 drop"),
            "{s}"
        );
    }

    #[test]
    fn total_loss_is_a_plain_drop() {
        let s = NetFaults {
            loss_percent: 100,
            ..Default::default()
        }
        .ruleset();
        assert!(s.contains("iifname \"eth0\" drop"), "{s}");
        assert!(!s.contains("numgen"), "{s}");
    }
}
