//! Running one check of a workload's probe (`HostEffect::RunProbe`): a
//! TCP connect, an HTTP GET, a command on this host or inside a VM's guest
//! (through its guest channel), bounded by the probe's timeout. What the outcome means is the core's (`probe.rs`).
//! A heartbeat probe has no check: its reports come through `notify.rs`.

use haven_core::probe::{CheckOutcome, ProbeCheck};
use haven_drivers::guest_channel::GuestExec;
use std::time::Duration;

/// The most of an HTTP answer's body read for `body_contains`.
const BODY_READ_MAX_BYTES: usize = 64 * 1024;

/// Run `check` against an instance on this host, within `timeout_ms`;
/// `guest`: the way into the instance's guest, if it is a VM watched with
/// the Haven guest channel.
pub async fn run(
    check: &ProbeCheck,
    timeout_ms: u64,
    http: &reqwest::Client,
    guest: Option<GuestExec>,
) -> CheckOutcome {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    match tokio::time::timeout(timeout, check_once(check, timeout, http, guest)).await {
        Ok(outcome) => outcome,
        Err(_) => CheckOutcome::TimedOut,
    }
}

async fn check_once(
    check: &ProbeCheck,
    timeout: Duration,
    http: &reqwest::Client,
    guest: Option<GuestExec>,
) -> CheckOutcome {
    match check {
        ProbeCheck::Tcp { port, host } => {
            let host = host.as_deref().unwrap_or("127.0.0.1");
            match tokio::net::TcpStream::connect((host, *port as u16)).await {
                Ok(_) => CheckOutcome::Pass,
                Err(e) => fail(format!("connect to {host}:{port}: {e}")),
            }
        }
        ProbeCheck::Http {
            port,
            host,
            path,
            expect_status,
            body_contains,
            https,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let host = match host.as_deref().unwrap_or("127.0.0.1") {
                // An IPv6 address is bracketed in a URL.
                h if h.contains(':') => format!("[{h}]"),
                h => h.to_owned(),
            };
            let url = format!("{scheme}://{host}:{port}{path}");
            http_check(
                http,
                &url,
                timeout,
                *expect_status,
                body_contains.as_deref(),
            )
            .await
        }
        ProbeCheck::Exec {
            command,
            in_guest: true,
        } => guest_check(command, timeout, guest).await,
        ProbeCheck::Exec { command, .. } => exec_check(command).await,
        // Never asked for: the core judges a heartbeat probe by the
        // application's reports (`notify.rs`, `HostInput::AppHeartbeat`)
        // and never makes it a `RunProbe` (`ProbeMonitor::check_due`).
        ProbeCheck::Heartbeat => fail("a heartbeat probe is not a check the agent runs".into()),
    }
}

async fn http_check(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    expect_status: u32,
    body_contains: Option<&str>,
) -> CheckOutcome {
    let resp = match http.get(url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("GET {url}: {e}")),
    };
    let status = u32::from(resp.status().as_u16());
    if status != expect_status {
        return fail(format!(
            "GET {url}: status {status}, expected {expect_status}"
        ));
    }
    let Some(wanted) = body_contains else {
        return CheckOutcome::Pass;
    };
    let mut body = Vec::new();
    let mut resp = resp;
    while body.len() < BODY_READ_MAX_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) => return fail(format!("GET {url}: reading the body: {e}")),
        }
    }
    if String::from_utf8_lossy(&body).contains(wanted) {
        CheckOutcome::Pass
    } else {
        fail(format!("GET {url}: the body does not contain {wanted:?}"))
    }
}

/// A command that exits 0; killed with its whole process group if the
/// check times out, as the future is dropped.
async fn exec_check(command: &[String]) -> CheckOutcome {
    let Some((program, args)) = command.split_first() else {
        return fail("no command".into());
    };
    let spawned = crate::child::GroupKill::spawn(
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let (mut child, group) = match spawned {
        Ok(x) => x,
        Err(e) => return fail(format!("{program}: {e}")),
    };
    let status = child.wait().await;
    group.disarm();
    match status {
        Ok(s) if s.success() => CheckOutcome::Pass,
        Ok(s) => fail(format!("{program} {s}")),
        Err(e) => fail(format!("{program}: {e}")),
    }
}

/// A command inside the guest that exits 0. The guest is told the
/// probe's timeout, to end the command when it passes; the host stops
/// waiting then anyway.
async fn guest_check(
    command: &[String],
    timeout: Duration,
    guest: Option<GuestExec>,
) -> CheckOutcome {
    let program = command.first().map_or("", String::as_str);
    let Some(guest) = guest else {
        return fail(format!(
            "{program} in the guest: the VM is not watched with the Haven guest channel (yet)"
        ));
    };
    match guest.run(command, timeout.as_millis() as u64).await {
        Ok(0) => CheckOutcome::Pass,
        Ok(status) => fail(format!("{program} in the guest: exit status {status}")),
        Err(e) => fail(format!("{program} in the guest: {e}")),
    }
}

fn fail(reason: String) -> CheckOutcome {
    CheckOutcome::Fail { reason }
}

/// The client HTTP checks use: no proxy, no redirects followed (an
/// answer is judged as it comes), any certificate accepted for `https`
/// (the check asks whether the service answers, not who it is).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` still runs (gone, or a zombie waiting to be reaped,
    /// counts as ended).
    fn runs(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    /// A check that overruns its timeout is ended with everything it
    /// started: a shell's background child too, not only the shell (one
    /// stuck command left behind per interval would pile up for ever).
    #[tokio::test]
    async fn an_exec_check_that_times_out_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let check = ProbeCheck::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), script],
            in_guest: false,
        };
        let outcome = run(&check, 500, &http_client(), None).await;
        assert_eq!(outcome, CheckOutcome::TimedOut);
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while runs(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !runs(pid),
            "the check's background sleep ({pid}) still runs"
        );
    }

    /// A one-route HTTP server on loopback answering every request with
    /// `status` and `body`; returns its port.
    async fn serve(status: u16, body: &'static str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn http(port: u16, expect_status: u32, body_contains: Option<&str>) -> ProbeCheck {
        ProbeCheck::Http {
            port: u32::from(port),
            host: None,
            path: "/health".into(),
            expect_status,
            body_contains: body_contains.map(str::to_owned),
            https: false,
        }
    }

    fn reason(outcome: CheckOutcome) -> String {
        match outcome {
            CheckOutcome::Fail { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// An HTTP check passes on the expected status, and on a body that
    /// holds the text when one is asked for; else it fails, saying what
    /// it got.
    #[tokio::test]
    async fn an_http_check_wants_its_status_and_its_text() {
        let client = http_client();
        let ok = serve(200, "status: ok").await;
        let down = serve(503, "status: ok").await;
        let check = |c: ProbeCheck| {
            let client = client.clone();
            async move { run(&c, 2_000, &client, None).await }
        };
        assert_eq!(check(http(ok, 200, None)).await, CheckOutcome::Pass);
        let named = ProbeCheck::Http {
            port: u32::from(ok),
            host: Some("127.0.0.1".into()),
            path: "/".into(),
            expect_status: 200,
            body_contains: None,
            https: false,
        };
        assert_eq!(check(named).await, CheckOutcome::Pass);
        assert_eq!(check(http(ok, 200, Some("ok"))).await, CheckOutcome::Pass);
        let why = reason(check(http(down, 200, Some("ok"))).await);
        assert!(why.contains("status 503, expected 200"), "{why}");
        assert_eq!(check(http(down, 503, None)).await, CheckOutcome::Pass);
        let why = reason(check(http(ok, 200, Some("healthy"))).await);
        assert!(why.contains("does not contain \"healthy\""), "{why}");
    }

    /// A TCP check passes when something listens, and an exec check when
    /// its command exits 0; otherwise each fails, naming what it tried.
    #[tokio::test]
    async fn tcp_and_exec_checks_pass_and_fail() {
        let client = http_client();
        let listening = serve(200, "").await;
        let tcp = |port: u16| ProbeCheck::Tcp {
            port: u32::from(port),
            host: None,
        };
        assert_eq!(
            run(&tcp(listening), 2_000, &client, None).await,
            CheckOutcome::Pass
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let why = reason(run(&tcp(closed), 2_000, &client, None).await);
        assert!(why.contains(&format!("127.0.0.1:{closed}")), "{why}");
        let exec = |program: &str| ProbeCheck::Exec {
            command: vec![program.into()],
            in_guest: false,
        };
        assert_eq!(
            run(&exec("/bin/true"), 2_000, &client, None).await,
            CheckOutcome::Pass
        );
        assert!(matches!(
            run(&exec("/bin/false"), 2_000, &client, None).await,
            CheckOutcome::Fail { .. }
        ));
        let why = reason(run(&exec("/nonexistent/check"), 2_000, &client, None).await);
        assert!(why.contains("/nonexistent/check"), "{why}");
    }
}
