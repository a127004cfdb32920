//! The cluster settings as an operator sees them: named keys, parsing,
//! range checks and change descriptions. One validation, used by the
//! bootstrap flags, `haven settings set` and the state machine alike.

use crate::events::SettingChange;
use crate::liveness::Timing;
use crate::model::{ClusterSettings, IsolationResponse};

/// Bounds of every timing setting (ms). A lease shorter than three
/// heartbeats would lapse on one lost packet; longer than a minute would
/// keep a failed host's workloads down for that long.
pub const HEARTBEAT_INTERVAL_MS_RANGE: (u64, u64) = (20, 10_000);
pub const LEASE_MS_MAX: u64 = 60_000;
pub const MARGIN_MS_MIN: u64 = 50;
pub const FENCE_AFTER_MS_MAX: u64 = 600_000;
pub const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 600_000;
pub const RESTART_GRACE_MS_MAX: u64 = 3_600_000;
/// Bounds of `host_cert_validity_s`: a minute (a host renews every 40 s:
/// for tests and labs) to ten years.
pub const HOST_CERT_VALIDITY_S_RANGE: (u64, u64) = (60, 3_650 * 86_400);

/// The settable keys, with what each means (for `haven settings`).
pub const KEYS: &[(&str, &str)] = &[
    (
        "heartbeat_interval_ms",
        "how often every agent heartbeats the coordinator",
    ),
    (
        "lease_ms",
        "how long an acknowledged heartbeat lets a host run its workloads",
    ),
    (
        "margin_ms",
        "the coordinator's extra wait beyond a lease (clock drift, quorum confirmation)",
    ),
    (
        "suspect_after_ms",
        "silence after which a host is shown suspect (no action)",
    ),
    (
        "fence_after_ms",
        "silence after which a host with a fence device is fenced",
    ),
    (
        "restart_grace_ms",
        "how long a gracefully stopped agent may stay away before its workloads move",
    ),
    (
        "isolation_response",
        "power-off | shutdown | leave-running: what a host does when it loses its lease",
    ),
    (
        "shutdown_timeout_ms",
        "bound of the shutdown isolation response",
    ),
    (
        "allow_root_workloads",
        "true | false: whether a spec without `user` may run as root (false: every spec names its user, user = \"root\" included)",
    ),
    (
        "host_cert_validity_s",
        "lifetime of host certificates in seconds (default 90 days); hosts renew with a third left. A host whose certificate expires while no coordinator answers must join again: keep it long in production",
    ),
    (
        "datastore",
        "the shared datastore path (fixed at bootstrap)",
    ),
];

/// Each setting as `(key, value)`, in `KEYS` order.
pub fn describe(s: &ClusterSettings) -> Vec<(&'static str, String)> {
    KEYS.iter()
        .map(|(k, _)| (*k, value_of(s, k).unwrap_or_default()))
        .collect()
}

fn value_of(s: &ClusterSettings, key: &str) -> Option<String> {
    Some(match key {
        "heartbeat_interval_ms" => s.timing.heartbeat_interval_ms.to_string(),
        "lease_ms" => s.timing.lease_ms.to_string(),
        "margin_ms" => s.timing.margin_ms.to_string(),
        "suspect_after_ms" => s.timing.suspect_after_ms.to_string(),
        "fence_after_ms" => s.fence_after_ms.to_string(),
        "restart_grace_ms" => s.restart_grace_ms.to_string(),
        "isolation_response" => s.isolation_response.as_str().to_string(),
        "shutdown_timeout_ms" => s.shutdown_timeout_ms.to_string(),
        "allow_root_workloads" => s.allow_root_workloads.to_string(),
        "host_cert_validity_s" => s.host_cert_validity_s.to_string(),
        "datastore" => s.datastore.clone().unwrap_or_else(|| "none".into()),
        _ => return None,
    })
}

/// `settings` with `key` set to `value` (not yet validated as a whole:
/// call [`validate`] after the last change).
pub fn set(settings: &ClusterSettings, key: &str, value: &str) -> Result<ClusterSettings, String> {
    let mut s = settings.clone();
    let ms = || {
        value.trim().parse::<u64>().map_err(|_| {
            format!("{key}={value:?}: not a whole number of milliseconds, e.g. {key}=1000")
        })
    };
    match key {
        "heartbeat_interval_ms" => s.timing.heartbeat_interval_ms = ms()?,
        "lease_ms" => s.timing.lease_ms = ms()?,
        "margin_ms" => s.timing.margin_ms = ms()?,
        "suspect_after_ms" => s.timing.suspect_after_ms = ms()?,
        "fence_after_ms" => s.fence_after_ms = ms()?,
        "restart_grace_ms" => s.restart_grace_ms = ms()?,
        "shutdown_timeout_ms" => s.shutdown_timeout_ms = ms()?,
        "isolation_response" => {
            s.isolation_response = IsolationResponse::parse(value.trim()).ok_or_else(|| {
                format!("isolation_response={value:?}: expected power-off, shutdown or leave-running")
            })?
        }
        "host_cert_validity_s" => {
            s.host_cert_validity_s = value.trim().parse::<u64>().map_err(|_| {
                format!("{key}={value:?}: not a whole number of seconds, e.g. {key}=7776000 (90 days)")
            })?
        }
        "allow_root_workloads" => {
            s.allow_root_workloads = match value.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(format!(
                        "allow_root_workloads={value:?}: expected true or false"
                    ))
                }
            }
        }
        "datastore" => {
            return Err(
                "datastore: fixed at bootstrap (every host mounts it at that path); it cannot be changed on a running cluster".into(),
            )
        }
        other => {
            let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "unknown setting {other:?}; the settings are: {}",
                keys.join(", ")
            ));
        }
    }
    Ok(s)
}

/// Every problem with `s`, each naming the key, the value and the fix.
pub fn validate(s: &ClusterSettings) -> Result<(), Vec<String>> {
    let mut out = vec![];
    let t: &Timing = &s.timing;
    let (hb_min, hb_max) = HEARTBEAT_INTERVAL_MS_RANGE;
    if !(hb_min..=hb_max).contains(&t.heartbeat_interval_ms) {
        out.push(format!(
            "heartbeat_interval_ms={}: must be {hb_min}..={hb_max}",
            t.heartbeat_interval_ms
        ));
    }
    if t.lease_ms < 3 * t.heartbeat_interval_ms || t.lease_ms > LEASE_MS_MAX {
        out.push(format!(
            "lease_ms={}: must be at least 3 heartbeat intervals ({}) and at most {LEASE_MS_MAX}",
            t.lease_ms,
            3 * t.heartbeat_interval_ms
        ));
    }
    if t.margin_ms < MARGIN_MS_MIN || t.margin_ms > t.lease_ms {
        out.push(format!(
            "margin_ms={}: must be {MARGIN_MS_MIN}..=lease_ms ({})",
            t.margin_ms, t.lease_ms
        ));
    }
    if t.suspect_after_ms <= t.heartbeat_interval_ms || t.suspect_after_ms > t.lease_ms {
        out.push(format!(
            "suspect_after_ms={}: must be more than heartbeat_interval_ms ({}) and at most lease_ms ({})",
            t.suspect_after_ms, t.heartbeat_interval_ms, t.lease_ms
        ));
    }
    if s.fence_after_ms < 2 * t.heartbeat_interval_ms || s.fence_after_ms > FENCE_AFTER_MS_MAX {
        out.push(format!(
            "fence_after_ms={}: must be at least 2 heartbeat intervals ({}) and at most {FENCE_AFTER_MS_MAX}",
            s.fence_after_ms,
            2 * t.heartbeat_interval_ms
        ));
    }
    if s.shutdown_timeout_ms > SHUTDOWN_TIMEOUT_MS_MAX {
        out.push(format!(
            "shutdown_timeout_ms={}: at most {SHUTDOWN_TIMEOUT_MS_MAX}",
            s.shutdown_timeout_ms
        ));
    }
    if s.restart_grace_ms > RESTART_GRACE_MS_MAX {
        out.push(format!(
            "restart_grace_ms={}: at most {RESTART_GRACE_MS_MAX} (0 turns the grace off)",
            s.restart_grace_ms
        ));
    }
    let (v_min, v_max) = HOST_CERT_VALIDITY_S_RANGE;
    if !(v_min..=v_max).contains(&s.host_cert_validity_s) {
        out.push(format!(
            "host_cert_validity_s={}: must be {v_min}..={v_max} (a minute to ten years)",
            s.host_cert_validity_s
        ));
    }
    if s.isolation_response == IsolationResponse::LeaveRunning && s.datastore.is_none() {
        out.push(
            "isolation_response=leave-running: needs a datastore (bootstrap with --datastore)"
                .into(),
        );
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// Each setting that differs: its key, old and new value.
pub fn changes(old: &ClusterSettings, new: &ClusterSettings) -> Vec<SettingChange> {
    describe(old)
        .into_iter()
        .zip(describe(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((k, from), (_, to))| SettingChange {
            key: k.to_string(),
            from,
            to,
        })
        .collect()
}

/// The bootstrap host's settings: the defaults with the operator's
/// explicit `(key, value)` flags applied, validated as a whole. When the
/// heartbeat interval is given but not the suspect delay, the latter
/// follows it (3.5 heartbeats, at most a lease).
pub fn from_flags(flags: &[(String, String)]) -> Result<ClusterSettings, Vec<String>> {
    let mut s = ClusterSettings::default();
    let mut problems = vec![];
    let given = |k: &str| flags.iter().any(|(f, _)| f == k);
    for (k, v) in flags {
        if k == "datastore" {
            // Fixed at bootstrap: this is the bootstrap.
            s.datastore = Some(v.clone());
            continue;
        }
        match set(&s, k, v) {
            Ok(n) => s = n,
            Err(e) => problems.push(e),
        }
    }
    if given("heartbeat_interval_ms") && !given("suspect_after_ms") {
        let t = &mut s.timing;
        t.suspect_after_ms = (t.heartbeat_interval_ms * 7 / 2).min(t.lease_ms);
    }
    if let Err(e) = validate(&s) {
        problems.extend(e);
    }
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems)
    }
}

/// Explicit flags of a joining or restarting agent that disagree with the
/// cluster's settings: each names both values and the way out.
pub fn disagreements(cluster: &ClusterSettings, flags: &[(String, String)]) -> Vec<String> {
    flags
        .iter()
        .filter_map(|(k, v)| {
            let theirs = value_of(cluster, k)?;
            let ours = match set(cluster, k, v) {
                Ok(n) => value_of(&n, k)?,
                Err(_) if k == "datastore" => v.clone(),
                Err(e) => return Some(e),
            };
            (ours != theirs).then(|| {
                format!(
                    "--{} {ours} disagrees with the cluster's {k} = {theirs}: drop the flag (the cluster's value applies to every host), or change it for the whole cluster with `haven settings set {k}={ours}`",
                    k.replace('_', "-")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_key_round_trips() {
        let d = ClusterSettings::default();
        assert_eq!(validate(&d), Ok(()));
        for (k, _) in KEYS.iter().filter(|(k, _)| *k != "datastore") {
            let v = value_of(&d, k).unwrap();
            assert_eq!(set(&d, k, &v).unwrap(), d, "{k}");
        }
    }

    #[test]
    fn bad_values_name_the_key_and_the_bound() {
        let d = ClusterSettings::default();
        assert!(set(&d, "lease_ms", "soon")
            .unwrap_err()
            .contains("lease_ms"));
        assert!(set(&d, "nope", "1")
            .unwrap_err()
            .contains("unknown setting"));
        assert!(set(&d, "datastore", "/x").unwrap_err().contains("fixed"));
        let s = set(&d, "lease_ms", "200").unwrap();
        let e = validate(&s).unwrap_err();
        assert!(e.iter().any(|m| m.starts_with("lease_ms=200")), "{e:?}");
        let s = set(&d, "isolation_response", "leave-running").unwrap();
        assert!(validate(&s).unwrap_err()[0].contains("datastore"));
        for bad in ["59", "315360001"] {
            let s = set(&d, "host_cert_validity_s", bad).unwrap();
            let e = validate(&s).unwrap_err();
            assert!(
                e[0].starts_with("host_cert_validity_s=") && e[0].contains("ten years"),
                "{e:?}"
            );
        }
        assert!(set(&d, "host_cert_validity_s", "90d")
            .unwrap_err()
            .contains("seconds"));
        let s = set(&d, "host_cert_validity_s", "60").unwrap();
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn flags_build_bootstrap_settings_and_disagreements_name_both_values() {
        let flags = vec![("heartbeat_interval_ms".to_string(), "50".to_string())];
        let s = from_flags(&flags).unwrap();
        assert_eq!(s.timing.heartbeat_interval_ms, 50);
        assert_eq!(s.timing.suspect_after_ms, 175);
        assert!(from_flags(&[("lease_ms".into(), "10".into())]).is_err());
        let ds = [("datastore".to_string(), "/srv/ds".to_string())];
        assert_eq!(
            from_flags(&ds).unwrap().datastore.as_deref(),
            Some("/srv/ds")
        );
        let d = ClusterSettings::default();
        assert!(disagreements(&d, &[("lease_ms".into(), "1000".into())]).is_empty());
        let e = disagreements(&d, &[("lease_ms".into(), "2000".into())]);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("--lease-ms 2000") && e[0].contains("lease_ms = 1000"),
            "{e:?}"
        );
        let e = disagreements(&d, &[("datastore".into(), "/srv/ds".into())]);
        assert!(e[0].contains("datastore = none"), "{e:?}");
    }

    #[test]
    fn allow_root_workloads_is_a_boolean_setting_on_by_default() {
        let d = ClusterSettings::default();
        assert!(d.allow_root_workloads);
        let off = set(&d, "allow_root_workloads", "false").unwrap();
        assert!(!off.allow_root_workloads);
        assert_eq!(validate(&off), Ok(()));
        let e = set(&d, "allow_root_workloads", "no").unwrap_err();
        assert!(
            e.contains("allow_root_workloads") && e.contains("true or false"),
            "{e}"
        );
        assert_eq!(
            changes(&d, &off),
            vec![change("allow_root_workloads", "true", "false")]
        );
        // Settings stored before the key existed read it as on.
        let mut json = serde_json::to_value(&off).unwrap();
        json.as_object_mut().unwrap().remove("allow_root_workloads");
        let old: ClusterSettings = serde_json::from_value(json).unwrap();
        assert!(old.allow_root_workloads);
    }

    #[test]
    fn changes_lists_only_what_differs() {
        let d = ClusterSettings::default();
        let s = set(&d, "lease_ms", "2000").unwrap();
        assert_eq!(changes(&d, &s), vec![change("lease_ms", "1000", "2000")]);
    }

    fn change(key: &str, from: &str, to: &str) -> SettingChange {
        SettingChange {
            key: key.into(),
            from: from.into(),
            to: to.into(),
        }
    }
}
