//! "Test connection" against the real core: each step says what happened, and the first
//! failure stops the test with the exact reason (refused TCP, refused credentials).

mod common;

use std::time::Duration;

use common::RunningCore;
use kp_gateway::upstream::probe::probe;
use kp_gateway::upstream::Upstream;
use platform_core::secret::Secret;

fn upstream(port: u16, password: &str) -> Upstream {
    Upstream {
        username: Some(common::USER.into()),
        password: Some(Secret::new(password)),
        reconnect_max: Duration::from_secs(1),
        ..Upstream::new("127.0.0.1", port)
    }
}

#[tokio::test]
async fn each_step_reports_its_outcome_and_the_first_failure_stops() {
    let dir = tempfile::tempdir().unwrap();
    let core = RunningCore::start(dir.path(), "127.0.0.1:0".parse().unwrap(), &["dev1"]).await;
    let port = core.core.mqtt_addr.port();

    let good = probe(&upstream(port, common::PASSWORD)).await;
    assert_eq!(good.len(), 2, "{good:?}");
    assert!(good.iter().all(|s| s.ok), "{good:?}");
    assert_eq!(good[1].step, "MQTT CONNECT");

    let wrong = probe(&upstream(port, "not-the-password")).await;
    assert!(wrong[0].ok, "TCP works: {wrong:?}");
    assert!(!wrong[1].ok);
    assert!(
        wrong[1].detail.contains("BadUserNamePassword"),
        "the broker's own answer is shown: {}",
        wrong[1].detail
    );
    core.shut().await;

    let closed = probe(&upstream(port, common::PASSWORD)).await;
    assert_eq!(closed.len(), 1, "no MQTT step after a failed TCP step");
    assert!(
        !closed[0].ok && closed[0].detail.contains("refused"),
        "{closed:?}"
    );
}
