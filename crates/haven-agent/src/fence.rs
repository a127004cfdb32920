//! Fence devices in the fence-agents convention (DESIGN.md §2.7): an
//! executable that reads `key=value` lines on stdin, among them
//! `action=off|on|reboot|status|monitor`. Exit 0 is success; for `status`,
//! 0 means on and 2 means off. Debian's fence-agents work unchanged.

use haven_core::model::FenceDevice;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Power the host off and confirm it is off. Returns how long it took.
pub async fn fence_off(dev: &FenceDevice, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let code = run(dev, "off", timeout).await?;
    if code != 0 {
        return Err(format!("{} action=off exited with {code}", dev.agent));
    }
    let left = timeout.saturating_sub(started.elapsed());
    match run(dev, "status", left).await? {
        2 => Ok(started.elapsed()),
        0 => Err(format!(
            "{} reports the host still on after action=off",
            dev.agent
        )),
        c => Err(format!("{} action=status exited with {c}", dev.agent)),
    }
}

async fn run(dev: &FenceDevice, action: &str, timeout: Duration) -> Result<i32, String> {
    // Killed with everything it started if it overruns (or the fence is
    // given up on).
    let (mut child, group) = crate::child::GroupKill::spawn(
        Command::new(&dev.agent)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .map_err(|e| format!("cannot run fence agent {}: {e}", dev.agent))?;
    let mut input = format!("action={action}\n");
    for (k, v) in &dev.args {
        input.push_str(&format!("{k}={v}\n"));
    }
    if let Some(mut stdin) = child.stdin.take() {
        // An agent that exits before reading its input (EPIPE) is judged by
        // its exit status below, like any other.
        if let Err(e) = stdin.write_all(input.as_bytes()).await {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(format!("writing to fence agent {}: {e}", dev.agent));
            }
        }
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            group.disarm();
            Ok(status.code().unwrap_or(-1))
        }
        Ok(Err(e)) => Err(format!("fence agent {}: {e}", dev.agent)),
        Err(_) => Err(format!(
            "fence agent {} action={action} did not finish within {} ms",
            dev.agent,
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Write an executable script at `path` through a child process (`install`):
    /// a file this (multi-threaded) process held open for writing could be
    /// inherited by a child another thread forks at that moment, and running
    /// the script then fails with ETXTBSY ("Text file busy").
    fn script(dir: &std::path::Path, body: &str) -> FenceDevice {
        let p = dir.join("fence");
        let text = dir.join("fence.text");
        std::fs::write(&text, format!("#!/bin/sh\n{body}\n")).unwrap();
        let installed = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&text)
            .arg(&p)
            .status()
            .unwrap();
        assert!(installed.success());
        FenceDevice {
            agent: p.display().to_string(),
            args: BTreeMap::from([("state".to_string(), dir.join("state").display().to_string())]),
        }
    }

    /// A fake device: `off` writes "off" to the file named by `state=`.
    const FAKE: &str = r#"while IFS== read k v; do eval "$k=\"$v\""; done
case "$action" in
  off) echo off > "$state"; exit 0 ;;
  status) [ "$(cat "$state" 2>/dev/null)" = off ] && exit 2; exit 0 ;;
esac
exit 1"#;

    #[tokio::test]
    async fn off_is_confirmed_by_status() {
        let d = tempfile::tempdir().unwrap();
        let dev = script(d.path(), FAKE);
        fence_off(&dev, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("state"))
                .unwrap()
                .trim(),
            "off"
        );
    }

    #[tokio::test]
    async fn failing_and_hanging_devices_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let dev = script(d.path(), "exit 1");
        assert!(fence_off(&dev, Duration::from_secs(5))
            .await
            .unwrap_err()
            .contains("exited with 1"));
        let dev = script(d.path(), "sleep 10");
        let e = fence_off(&dev, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        // Claims success but the host is still on.
        let dev = script(d.path(), "read a; exit 0");
        assert!(fence_off(&dev, Duration::from_secs(5))
            .await
            .unwrap_err()
            .contains("still on"));
    }
}
