//! The "never twice" checker (DESIGN §2.1) over the tick files the
//! `haven-witness` workload writes.
//!
//! Each witness instance appends `<workload> <host> <generation>
//! <monotonic_ns>` to `<dir>/<workload>.ticks` every interval. An
//! *instance* is one (host, generation) of a workload; its lifetime is
//! known from its first to its last tick. Two instances of one workload
//! whose lifetimes overlap ran at the same time: the safety rule is broken.
//!
//! CLOCK_MONOTONIC is system-wide on this machine (all simulated hosts share
//! one kernel), so ticks from different hosts compare directly. The ticks
//! sample a lifetime: an instance runs up to one interval before its first
//! and after its last tick, so an overlap shorter than the interval can go
//! unseen. Two processes of the same (host, generation) at once are one
//! instance to this checker.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::Path;

/// File name suffix of the witness tick files.
pub const TICKS_SUFFIX: &str = ".ticks";

/// One (host, generation) of a workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub host: String,
    pub generation: u64,
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@gen{}", self.host, self.generation)
    }
}

/// What the ticks say about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub workload: String,
    pub id: InstanceId,
    pub first_ns: u64,
    pub last_ns: u64,
    pub ticks: u64,
}

impl Instance {
    pub fn lifetime_ms(&self) -> f64 {
        ns_to_ms(self.last_ns - self.first_ns)
    }
}

/// Two instances of one workload that ran at the same time.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlap {
    pub workload: String,
    pub a: InstanceId,
    pub b: InstanceId,
    pub overlap_ms: f64,
}

/// The result of [`check_witness`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WitnessReport {
    /// Every instance seen, by workload, then by first tick.
    pub instances: Vec<Instance>,
    pub overlaps: Vec<Overlap>,
    /// Lines that were not `<workload> <host> <generation> <ns>` (skipped).
    pub malformed_lines: usize,
}

/// Read every `*.ticks` file of `dir` and find the overlapping instances.
/// A missing or unreadable directory gives an empty report.
pub fn check_witness(dir: &Path) -> WitnessReport {
    let mut lines = String::new();
    if let Ok(entries) = fs::read_dir(dir) {
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(TICKS_SUFFIX))
            .collect();
        files.sort();
        for f in files {
            if let Ok(text) = fs::read_to_string(&f) {
                lines.push_str(&text);
                if !text.ends_with('\n') {
                    lines.push('\n');
                }
            }
        }
    }
    check_ticks(&lines)
}

/// [`check_witness`] over the concatenated contents of tick files.
pub fn check_ticks(text: &str) -> WitnessReport {
    let mut by_instance: BTreeMap<(String, InstanceId), Instance> = BTreeMap::new();
    let mut malformed_lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((workload, id, at_ns)) = parse_tick(line) else {
            malformed_lines += 1;
            continue;
        };
        by_instance
            .entry((workload.clone(), id.clone()))
            .and_modify(|i| {
                i.first_ns = i.first_ns.min(at_ns);
                i.last_ns = i.last_ns.max(at_ns);
                i.ticks += 1;
            })
            .or_insert(Instance {
                workload,
                id,
                first_ns: at_ns,
                last_ns: at_ns,
                ticks: 1,
            });
    }
    let mut instances: Vec<Instance> = by_instance.into_values().collect();
    instances.sort_by(|x, y| (&x.workload, x.first_ns).cmp(&(&y.workload, y.first_ns)));

    let mut overlaps = Vec::new();
    for (i, a) in instances.iter().enumerate() {
        for b in instances[i + 1..]
            .iter()
            .take_while(|b| b.workload == a.workload)
        {
            let start = a.first_ns.max(b.first_ns);
            let end = a.last_ns.min(b.last_ns);
            if end > start {
                overlaps.push(Overlap {
                    workload: a.workload.clone(),
                    a: a.id.clone(),
                    b: b.id.clone(),
                    overlap_ms: ns_to_ms(end - start),
                });
            }
        }
    }
    WitnessReport {
        instances,
        overlaps,
        malformed_lines,
    }
}

fn parse_tick(line: &str) -> Option<(String, InstanceId, u64)> {
    let mut fields = line.split_ascii_whitespace();
    let workload = fields.next()?.to_owned();
    let host = fields.next()?.to_owned();
    let generation = fields.next()?.parse().ok()?;
    let at_ns = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some((workload, InstanceId { host, generation }, at_ns))
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl WitnessReport {
    /// The longest time two instances of one workload ran together (0 when
    /// none did).
    pub fn max_overlap_ms(&self) -> f64 {
        self.overlaps
            .iter()
            .map(|o| o.overlap_ms)
            .fold(0.0, f64::max)
    }

    /// Instances of `workload`, oldest first.
    pub fn instances_of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = &'a Instance> {
        self.instances
            .iter()
            .filter(move |i| i.workload == workload)
    }

    /// Panic with this report if any workload ran twice at once.
    pub fn assert_never_twice(&self) {
        if !self.overlaps.is_empty() {
            panic!("safety rule 1 broken: a workload ran twice at once\n{self}");
        }
    }
}

impl fmt::Display for WitnessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.overlaps.is_empty() {
            writeln!(f, "no overlapping instances")?;
        }
        for o in &self.overlaps {
            writeln!(
                f,
                "OVERLAP {}: {} and {} ran together for {:.1} ms",
                o.workload, o.a, o.b, o.overlap_ms
            )?;
        }
        writeln!(f, "instances (times in ms after the earliest tick):")?;
        let origin = self.instances.iter().map(|i| i.first_ns).min().unwrap_or(0);
        for i in &self.instances {
            writeln!(
                f,
                "  {:<16} {:<14} {:>10.1} .. {:>10.1}  ({} ticks)",
                i.workload,
                i.id.to_string(),
                ns_to_ms(i.first_ns - origin),
                ns_to_ms(i.last_ns - origin),
                i.ticks
            )?;
        }
        if self.malformed_lines > 0 {
            writeln!(f, "{} malformed lines skipped", self.malformed_lines)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks every 20 ms from `from_ms` to `to_ms` inclusive.
    fn ticks(workload: &str, host: &str, generation: u64, from_ms: u64, to_ms: u64) -> String {
        (from_ms..=to_ms)
            .step_by(20)
            .map(|ms| format!("{workload} {host} {generation} {}\n", ms * 1_000_000))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn overlapping_instances_are_reported_with_their_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let text = ticks("web", "h1", 1, 0, 1000) + &ticks("web", "h2", 2, 900, 2000);
        write(dir.path(), "web.ticks", &text);
        let r = check_witness(dir.path());
        assert_eq!(r.instances.len(), 2);
        assert_eq!(r.overlaps.len(), 1, "{r}");
        let o = &r.overlaps[0];
        assert_eq!(o.workload, "web");
        assert_eq!(
            (o.a.host.as_str(), o.a.generation, o.b.host.as_str()),
            ("h1", 1, "h2")
        );
        assert!((o.overlap_ms - 100.0).abs() < 1e-9, "{}", o.overlap_ms);
        assert!((r.max_overlap_ms() - 100.0).abs() < 1e-9);
        let panic = std::panic::catch_unwind(|| r.assert_never_twice()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("OVERLAP web: h1@gen1 and h2@gen2"),
            "{message}"
        );
    }

    #[test]
    fn disjoint_instances_pass() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "db.ticks",
            &(ticks("db", "h1", 1, 0, 1000) + &ticks("db", "h3", 2, 1500, 3000)),
        );
        // Another workload at the same time is no overlap.
        write(dir.path(), "web.ticks", &ticks("web", "h1", 1, 0, 3000));
        let r = check_witness(dir.path());
        assert_eq!(r.instances.len(), 3);
        assert!(r.overlaps.is_empty(), "{r}");
        assert_eq!(r.max_overlap_ms(), 0.0);
        r.assert_never_twice();
        assert_eq!(r.instances_of("db").count(), 2);
    }

    #[test]
    fn back_to_back_instances_pass() {
        // The new instance's first tick is at the old one's last tick:
        // touching, not overlapping.
        let text = ticks("web", "h1", 1, 0, 1000) + &ticks("web", "h2", 2, 1000, 2000);
        let r = check_ticks(&text);
        assert!(r.overlaps.is_empty(), "{r}");
        r.assert_never_twice();
    }

    #[test]
    fn restart_in_place_is_one_instance_and_interleaved_lines_are_fine() {
        // Same host and generation after a restart in place; lines of two
        // instances interleaved as concurrent appends would leave them.
        let mut text = String::new();
        for ms in (0..=400).step_by(20) {
            text += &format!("web h1 1 {}\n", ms * 1_000_000);
            text += &format!("web h2 2 {}\n", (ms + 300) * 1_000_000);
        }
        let r = check_ticks(&text);
        assert_eq!(r.instances.len(), 2);
        assert_eq!(r.instances[0].ticks, 21);
        assert_eq!(r.overlaps.len(), 1);
        assert!((r.overlaps[0].overlap_ms - 100.0).abs() < 1e-9);
    }

    #[test]
    fn malformed_lines_are_counted_and_skipped() {
        let text = "web h1 1 100\ngarbage\nweb h1 x 5\nweb h1 1 200 extra\n\nweb h1 1 300\n";
        let r = check_ticks(text);
        assert_eq!(r.malformed_lines, 3);
        assert_eq!(r.instances.len(), 1);
        assert_eq!(
            (r.instances[0].first_ns, r.instances[0].last_ns),
            (100, 300)
        );
    }

    #[test]
    fn missing_dir_is_an_empty_report() {
        let r = check_witness(Path::new("/nonexistent/haven-witness"));
        assert_eq!(r, WitnessReport::default());
        r.assert_never_twice();
    }
}
