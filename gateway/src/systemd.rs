//! systemd integration: `sd_notify` readiness, watchdog keep-alives and stopping notices
//! (the `Type=notify` protocol of sd_notify(3): datagrams to `$NOTIFY_SOCKET`), and the
//! open-file limit fitted to the configured connection caps.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification; errors are logged once at debug level and otherwise ignored
/// (a missing notification must never take the gateway down).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract socket namespace (Linux).
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::debug!("sd_notify {state:?} failed: {e}");
    }
}

/// The watchdog period systemd asked for (`$WATCHDOG_USEC`), if it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its period until the task is dropped.
pub async fn watchdog_loop() {
    let Some(period) = watchdog_interval() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}

/// Raises the soft open-file limit to `need` when the hard limit allows; returns the
/// warning to log when it does not (the connection caps could then exhaust descriptors,
/// and new connections would fail with "Too many open files").
pub fn fit_open_files(need: u64) -> Option<String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    let hard = now.maximum.unwrap_or(u64::MAX);
    if soft >= need {
        return None;
    }
    let target = need.min(hard);
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: now.maximum,
        },
    )
    .is_ok();
    if raised && target >= need {
        log::info!(
            "open-file limit raised from {soft} to {target} for the configured connection caps"
        );
        return None;
    }
    Some(format!(
        "the configured connection caps need up to {need} open files but the limit is {}: \
         add LimitNOFILE={need} with `sudo systemctl edit kp-gateway` (or lower \
         core.*.max_connections)",
        if raised { target } else { soft }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        // The variable is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn without_watchdog_usec_there_is_no_watchdog() {
        if std::env::var_os("WATCHDOG_USEC").is_none() {
            assert_eq!(watchdog_interval(), None);
        }
    }
}
