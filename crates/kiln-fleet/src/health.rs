//! Health checks: an HTTP GET of the group's path, made inside the
//! instance's network namespace, every interval after the grace period.

use std::io::{Read, Write};
use std::time::Duration;

use crate::fleet::Fleet;
use crate::model::Group;
use crate::runtime::Machine;

/// One check: a 2xx or 3xx answer within the timeout passes.
pub fn check(machine: &dyn Machine, port: u16, path: &str, timeout: Duration) -> bool {
    let Ok(mut stream) = machine.connect(port, timeout) else {
        return false;
    };
    // Only a zero timeout is refused, and without one a check could wait
    // forever: that check fails.
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
    {
        return false;
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kiln-health-check\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    matches!(status, Some(200..=399))
}

pub(crate) async fn check_loop(fleet: Fleet, id: String, group: Group) {
    let h = &group.spec.health;
    tokio::time::sleep(Duration::from_millis(h.grace_period_ms)).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(Duration::from_millis(h.interval_ms)).await;
        }
        first = false;
        if fleet.is_stopped() {
            return;
        }
        let Some(live) = fleet.is_live(&id) else {
            return;
        };
        let (port, path, timeout) = (
            group.spec.port,
            h.path.clone(),
            Duration::from_millis(h.timeout_ms),
        );
        let ok = tokio::task::spawn_blocking(move || check(live.as_ref(), port, &path, timeout))
            .await
            .unwrap_or(false);
        if ok {
            successes += 1;
            failures = 0;
            if successes >= h.healthy_threshold {
                changed(&fleet, &id, &group.name, true).await;
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= h.unhealthy_threshold {
                changed(&fleet, &id, &group.name, false).await;
                return;
            }
        }
    }
}

/// Records a health change on a blocking thread: it writes the database.
async fn changed(fleet: &Fleet, id: &str, group: &str, healthy: bool) {
    let (f, id, group) = (fleet.clone(), id.to_string(), group.to_string());
    if let Err(e) =
        tokio::task::spawn_blocking(move || f.health_changed(&id, &group, healthy)).await
    {
        tracing::error!(error = %e, "recording a health change panicked");
    }
}
