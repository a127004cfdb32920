//! Issue 9 on the test bed: mutual TLS between real hosts. Requests without
//! a certificate, or with the wrong one, are refused on the wire; the CA
//! rotates and every host renews its certificate on a running cluster
//! while the witness shows nothing moved.

mod common;

use common::*;
use haven_api::v1::CaRotationStep;
use haven_testbed::Testbed;
use serde_json::Value;
use std::process::Command;

/// `curl` inside `via`'s namespace: POST `body` to `path` of `host`'s API,
/// trusting the cluster CA, with `cert` (a host's data dir whose
/// certificate to present) if given. Returns the HTTP status.
fn post(
    bed: &Testbed,
    via: &str,
    host: &str,
    path: &str,
    body: &str,
    cert: Option<&str>,
) -> String {
    let ca = bed.data_dir("h1").join("tls/ca.pem");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        bed.netns(via),
        "curl",
        "-s",
        "-o",
        "/dev/null",
    ])
    .args(["-w", "%{http_code}", "--max-time", "10", "--cacert"])
    .arg(&ca)
    .args([
        "-H",
        "content-type: application/json",
        "-X",
        "POST",
        "--data",
        body,
    ]);
    if let Some(c) = cert {
        let dir = bed.data_dir(c).join("tls");
        cmd.arg("--cert").arg(dir.join("host.pem"));
        cmd.arg("--key").arg(dir.join("host-key.pem"));
    }
    // The certificate is checked against the CA, not the address.
    cmd.arg("--insecure");
    cmd.arg(format!("https://{}{path}", bed.api(host)));
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A forged heartbeat for `host`, as an attacker would send it.
fn heartbeat_for(host: &str) -> String {
    format!(
        r#"{{"host":"{host}","instance_id":"x","node_id":1,"address":"10.0.0.1:7440","capacity":{{"vcpus":1,"memory_mib":64}},"labels":{{}},"sent_ms":1,"boot":"b","applied_revision":0,"observed":[]}}"#
    )
}

#[test]
fn without_the_right_certificate_no_host_or_raft_route_answers() {
    let mut bed = start(4, |_| {});
    let s = apply(&mut bed, FOUR);
    let leader = s["leader"].as_str().unwrap().to_owned();
    let took_office = |k: &EventKind| matches!(k, EventKind::TookOffice { .. });
    let offices = events(&bed, "h1").count(took_office);
    let vote = r#"{"vote":{"leader_id":{"term":18446744073709551615,"node_id":9},"committed":false},"last_log_id":null}"#;
    // No certificate: a forged heartbeat keeps no host alive, a forged
    // vote with the largest term reaches no Raft core, nothing applies.
    assert_eq!(
        post(
            &bed,
            "h4",
            &leader,
            "/v1/heartbeat",
            &heartbeat_for("h2"),
            None
        ),
        "401"
    );
    assert_eq!(post(&bed, "h4", &leader, "/raft/vote", vote, None), "401");
    assert_eq!(post(&bed, "h4", &leader, "/raft/append", "{}", None), "401");
    assert_eq!(post(&bed, "h4", &leader, "/v1/apply", "{}", None), "401");
    assert_eq!(
        post(&bed, "h4", &leader, "/v1/delete", r#"{"name":"w1"}"#, None),
        "401"
    );
    // A worker's certificate: no Raft route, no heartbeat for another host.
    assert_eq!(
        post(&bed, "h4", &leader, "/raft/vote", vote, Some("h4")),
        "403"
    );
    assert_eq!(
        post(&bed, "h4", &leader, "/raft/append", "{}", Some("h4")),
        "403"
    );
    assert_eq!(
        post(
            &bed,
            "h4",
            &leader,
            "/v1/heartbeat",
            &heartbeat_for("h2"),
            Some("h4")
        ),
        "403"
    );
    // Nothing changed: every host online, every workload where it was.
    let after = bed.status().unwrap();
    assert_eq!(placement(&after), placement(&s));
    for h in bed.host_names() {
        assert_eq!(host_state(&after, &h), "online", "{h}");
    }
    let ev = events(&bed, "h1");
    assert_eq!(
        ev.count(took_office),
        offices,
        "an election happened:\n{ev}"
    );
    never_twice(&bed);
}

/// Every host's TLS report in `status`.
fn tls_of(s: &Value) -> Vec<(String, String, String)> {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().to_owned(),
                h["tls"]["bundle_sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                h["tls"]["cert_ca_sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

fn signing_ca(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("signing CA SHA-256: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn the_ca_rotates_and_every_host_renews_while_nothing_moves() {
    let mut bed = start(4, |_| {});
    let s = apply(&mut bed, FOUR);
    let first = tls_of(&s);
    let old_bundle = first[0].1.clone();
    let old_ca = first[0].2.clone();
    assert!(
        first
            .iter()
            .all(|(_, b, c)| *b == old_bundle && *c == old_ca),
        "{first:?}"
    );

    // Start: every host comes to trust the new CA too.
    let out = bed.cli("h2", &["ca", "rotate"]).unwrap();
    assert_eq!(signing_ca(&out), old_ca, "the old CA still signs: {out}");
    let s = bed
        .wait_for("every host trusts the new CA", RECOVER, |s| {
            let t = tls_of(s);
            t.len() == 4 && t.iter().all(|(_, b, _)| *b != old_bundle && *b == t[0].1)
        })
        .unwrap();
    let both = tls_of(&s)[0].1.clone();
    // A switch before every host caught up would have been refused; now
    // the new CA signs and every host renews with it.
    let out = bed.cli("h3", &["ca", "rotate", "--switch"]).unwrap();
    let new_ca = signing_ca(&out);
    assert!(!new_ca.is_empty() && new_ca != old_ca, "{out}");
    bed.wait_for(
        "every host holds a certificate from the new CA",
        RECOVER,
        |s| tls_of(s).iter().all(|(_, _, c)| *c == new_ca),
    )
    .unwrap();
    // Finish: the old CA is trusted no more.
    bed.cli("h1", &["ca", "rotate", "--finish"]).unwrap();
    let s = bed
        .wait_for("every host trusts only the new CA", RECOVER, |s| {
            let t = tls_of(s);
            t.iter()
                .all(|(_, b, c)| *b != both && *b != old_bundle && *b == t[0].1 && *c == new_ca)
        })
        .unwrap();
    // Nothing moved, no host was declared failed, the CLI (root's
    // admin.json on h1, whose CA the agent updated) still works.
    assert_eq!(placement(&s), placement(&bed.status().unwrap()));
    let ev = events(&bed, "h1");
    assert!(!ev.any(is_failed), "{ev}");
    assert!(
        ev.any(|k| matches!(
            k,
            EventKind::CaRotation {
                step: CaRotationStep::Finished
            }
        )),
        "{ev}"
    );
    for h in bed.host_names() {
        assert_eq!(host_state(&s, &h), "online", "{h}");
    }
    let report = never_twice(&bed);
    for (w, _) in FOUR {
        assert_eq!(
            report.instances_of(w).count(),
            1,
            "{w} was restarted or moved"
        );
    }
}

/// Every host's certificate expiry (`cert_not_after_unix`), by host.
fn not_after_of(s: &Value) -> Vec<(String, i64)> {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().to_owned(),
                h["tls"]["cert_not_after_unix"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Certificates age and are renewed on a running cluster (issue 9): with
/// the lifetime shortened to a minute, every host first renews at once (its
/// 90-day certificate outlives the setting), then again as each new
/// certificate ages to a third of its life left, while the witness shows
/// that nothing moves and no host is declared failed.
#[test]
fn certificates_age_and_are_renewed_while_nothing_moves() {
    let mut bed = start(3, |_| {});
    let s = apply(&mut bed, FOUR);
    let day = 86_400;
    assert!(
        not_after_of(&s)
            .iter()
            .all(|(_, t)| *t > unix_now() + 80 * day),
        "{:?}",
        not_after_of(&s)
    );
    bed.cli("h1", &["settings", "set", "host_cert_validity_s=60"])
        .unwrap();
    // The shortened lifetime is adopted at once by every host.
    let s = bed
        .wait_for("every host holds a one-minute certificate", RECOVER, |s| {
            let t = not_after_of(s);
            t.len() == 3 && t.iter().all(|(_, n)| *n > 0 && *n <= unix_now() + 70)
        })
        .unwrap();
    let first = not_after_of(&s);
    // Each ages, and is replaced with a third of its minute left, before
    // it expires: twice over.
    let mut last = first.clone();
    for round in 0..2 {
        let s = bed
            .wait_for(
                "every host renewed its aging certificate",
                std::time::Duration::from_secs(90),
                |s| {
                    let t = not_after_of(s);
                    t.len() == 3 && t.iter().zip(&last).all(|((_, n), (_, before))| n > before)
                },
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        last = not_after_of(&s);
    }
    let s = bed.status().unwrap();
    for h in bed.host_names() {
        assert_eq!(host_state(&s, &h), "online", "{h}");
    }
    let ev = events(&bed, "h1");
    assert!(!ev.any(is_failed), "{ev}");
    let report = never_twice(&bed);
    for (w, _) in FOUR {
        assert_eq!(
            report.instances_of(w).count(),
            1,
            "{w} was restarted or moved"
        );
    }
}

/// A host was declared failed, or its workloads were taken off it.
fn is_failed(k: &EventKind) -> bool {
    matches!(
        k,
        EventKind::HostStateChanged {
            state: HostState::Failed,
            ..
        } | EventKind::WorkloadsUnassigned { .. }
    )
}
