//! Tests of the pure 1/KP client state: every input, and the effects it must give.

use super::*;
use crate::buffer::Lane;
use platform_core::kp1::{AppVersionName, EndpointToken};
use serde_json::json;

fn ep(avn: &str, token: &str) -> Endpoint {
    Endpoint::new(
        AppVersionName::new(avn).unwrap(),
        EndpointToken::new(token).unwrap(),
    )
}

fn dev() -> Endpoint {
    ep("app-v1", "dev1")
}

fn own() -> Endpoint {
    ep("gw-v1", "gw")
}

fn backlog(e: Endpoint) -> BatchKey {
    BatchKey {
        endpoint: e,
        lane: Lane::Backlog,
    }
}

fn batch(e: Endpoint, samples: &[&str]) -> Batch {
    Batch {
        key: backlog(e),
        seqs: (1..=samples.len() as i64).collect(),
        samples: samples.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn state() -> ClientState {
    let mut commands = BTreeMap::new();
    commands.insert(dev(), "boiler".to_owned());
    let mut meta = Map::new();
    meta.insert("model".into(), json!("X1"));
    ClientState::new(vec![dev(), own()], commands, Duration::from_secs(30))
        .with_metadata(vec![(dev(), meta), (own(), Map::new())])
        .with_own_config(OwnConfig {
            endpoint: own(),
            current_id: Some("c1".into()),
            announce: None,
        })
}

/// Sends one batch of `dev()` and returns the topic it went to.
fn send_one(s: &mut ClientState, now: Instant) -> String {
    let effects = s.batches_leased(vec![batch(dev(), &[r#"{"n":1}"#, r#"{"n":2}"#])], now);
    match effects.as_slice() {
        [Effect::SendBatch { topic, payload, .. }] => {
            assert_eq!(payload, br#"[{"n":1},{"n":2}]"#);
            topic.clone()
        }
        other => panic!("{other:?}"),
    }
}

fn publishes(effects: &[Effect]) -> Vec<(String, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { topic, payload } => {
                Some((topic.clone(), String::from_utf8_lossy(payload).into_owned()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn on_connect_it_subscribes_asks_for_commands_and_configuration_and_publishes_metadata() {
    let mut s = state();
    let effects = s.connected();
    let Effect::Subscribe(filters) = &effects[0] else {
        panic!("{effects:?}")
    };
    for f in [
        "kp1/app-v1/dcx/dev1/json/+/status",
        "kp1/app-v1/dcx/dev1/json/+/error",
        "kp1/gw-v1/dcx/gw/json/+/status",
        "kp1/gw-v1/cmx/gw/config/json/#",
        "kp1/app-v1/epmx/dev1/update/keys/+/error",
        "kp1/app-v1/cex/dev1/command/#",
    ] {
        assert!(
            filters.iter().any(|x| x == f),
            "{f} missing from {filters:?}"
        );
    }
    let p = publishes(&effects);
    let topics: Vec<&str> = p.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "kp1/app-v1/cex/dev1/command/write/1",
            "kp1/app-v1/epmx/dev1/update/keys/2",
            "kp1/gw-v1/cmx/gw/config/json/3",
        ]
    );
    assert_eq!(p[1].1, r#"{"model":"X1"}"#);
    assert_eq!(
        serde_json::from_str::<Value>(&p[2].1).unwrap(),
        json!({"configId": "c1", "observe": true})
    );
}

#[test]
fn an_applied_configuration_is_reported_once_on_the_next_connect() {
    let mut s = state().with_own_config(OwnConfig {
        endpoint: own(),
        current_id: Some("c2".into()),
        announce: Some("c2".into()),
    });
    let first = publishes(&s.connected());
    assert!(first
        .iter()
        .any(|(t, p)| t == "kp1/gw-v1/cmx/gw/applied/json"
            && p.contains(r#""statusCode":200"#)
            && p.contains("c2")));
    let again = publishes(&s.connected());
    assert!(!again.iter().any(|(t, _)| t.contains("applied")));
}

#[test]
fn a_status_answer_acknowledges_the_batch() {
    let mut s = state();
    let now = Instant::now();
    let topic = send_one(&mut s, now);
    assert_eq!(topic, "kp1/app-v1/dcx/dev1/json/1");
    let effects = s.message(&format!("{topic}/status"), b"{}", now, 0.5);
    assert_eq!(effects, vec![Effect::Ack(backlog(dev()))]);
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn a_4xx_error_parks_the_batch_with_its_reason() {
    let mut s = state();
    let now = Instant::now();
    let topic = send_one(&mut s, now);
    let err = br#"{"statusCode":400,"reasonPhrase":"bad sample"}"#;
    let effects = s.message(&format!("{topic}/error"), err, now, 0.5);
    assert_eq!(
        effects,
        vec![Effect::Park {
            key: backlog(dev()),
            status: 400,
            reason: "bad sample".into()
        }]
    );
}

#[test]
fn a_5xx_error_releases_the_batch_and_backs_the_endpoint_off() {
    let mut s = state();
    let now = Instant::now();
    let topic = send_one(&mut s, now);
    let err = br#"{"statusCode":503,"reasonPhrase":"busy"}"#;
    let effects = s.message(&format!("{topic}/error"), err, now, 0.5);
    assert_eq!(effects, vec![Effect::Release(backlog(dev()))]);
    assert!(s.busy(now).contains(&backlog(dev())), "backing off");
    assert!(!s
        .busy(now + Duration::from_secs(60))
        .contains(&backlog(dev())));
}

#[test]
fn an_unreadable_error_payload_counts_as_a_server_error() {
    let mut s = state();
    let now = Instant::now();
    let topic = send_one(&mut s, now);
    let effects = s.message(&format!("{topic}/error"), b"oops", now, 0.5);
    assert_eq!(effects, vec![Effect::Release(backlog(dev()))]);
}

#[test]
fn an_unanswered_batch_is_released_after_the_response_timeout() {
    let mut s = state();
    let now = Instant::now();
    send_one(&mut s, now);
    let timeout = Duration::from_secs(30);
    assert!(s
        .tick(now + Duration::from_secs(29), timeout, 0.5)
        .is_empty());
    let effects = s.tick(now + Duration::from_secs(31), timeout, 0.5);
    assert_eq!(effects, vec![Effect::Release(backlog(dev()))]);
}

#[test]
fn a_lost_connection_releases_every_outstanding_batch() {
    let mut s = state();
    let now = Instant::now();
    send_one(&mut s, now);
    assert_eq!(s.disconnected(), vec![Effect::Release(backlog(dev()))]);
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn a_batch_that_cannot_be_queued_is_released_and_backed_off() {
    let mut s = state();
    let now = Instant::now();
    send_one(&mut s, now);
    let effects = s.send_failed(backlog(dev()), now, 0.5);
    assert_eq!(effects, vec![Effect::Release(backlog(dev()))]);
    assert_eq!(s.outstanding(), 0);
    assert!(s.busy(now).contains(&backlog(dev())));
}

#[test]
fn a_stale_or_foreign_answer_changes_nothing() {
    let mut s = state();
    let now = Instant::now();
    send_one(&mut s, now);
    assert!(s
        .message("kp1/app-v1/dcx/dev1/json/99/status", b"{}", now, 0.5)
        .is_empty());
    assert!(s
        .message("kp1/app-v1/dcx/other/json/1/status", b"{}", now, 0.5)
        .is_empty());
    assert!(s.message("not/kp1", b"{}", now, 0.5).is_empty());
    assert_eq!(s.outstanding(), 1);
}

#[test]
fn a_successful_metadata_update_is_logged_quietly_and_a_refusal_as_a_warning() {
    // The old session logged every epmx answer, success included, as "refused" (WARN).
    assert_eq!(epmx_log_level(Direction::Status), log::Level::Debug);
    assert_eq!(epmx_log_level(Direction::Error), log::Level::Warn);
    let mut s = state();
    let now = Instant::now();
    assert!(s
        .message("kp1/app-v1/epmx/dev1/update/keys/2/status", b"{}", now, 0.5)
        .is_empty());
}

#[test]
fn a_command_push_becomes_an_execution_and_its_result_is_published() {
    let mut s = state();
    let now = Instant::now();
    let push = br#"[{"id":7,"payload":{"point":"sp","value":21.5}}]"#;
    let effects = s.message("kp1/app-v1/cex/dev1/command/write/status", push, now, 0.5);
    let [Effect::Execute {
        endpoint,
        kind,
        command,
    }] = effects.as_slice()
    else {
        panic!("{effects:?}")
    };
    assert_eq!(
        (endpoint, kind.as_str(), command.id.as_str()),
        (&dev(), "write", "7")
    );
    let result = CommandResult::error("7", 404, "no point");
    let out = publishes(&s.command_finished(&dev(), "write", result));
    assert_eq!(out[0].0, "kp1/app-v1/cex/dev1/result/write");
    assert_eq!(
        serde_json::from_str::<Value>(&out[0].1).unwrap(),
        json!([{"id": 7, "statusCode": 404, "reasonPhrase": "no point"}])
    );
}

#[test]
fn a_command_delivered_twice_runs_once_and_is_answered_twice() {
    let mut s = state();
    let now = Instant::now();
    let push = br#"[{"id":"c9","payload":{"point":"sp","value":1}}]"#;
    let topic = "kp1/app-v1/cex/dev1/command/write/status";
    assert!(matches!(
        s.message(topic, push, now, 0.5).as_slice(),
        [Effect::Execute { .. }]
    ));
    s.command_finished(
        &dev(),
        "write",
        CommandResult::error("c9", 502, "exception"),
    );
    let again = s.message("kp1/app-v1/cex/dev1/command/write/4/status", push, now, 0.5);
    let p = publishes(&again);
    assert_eq!(again.len(), 1);
    assert_eq!(p[0].0, "kp1/app-v1/cex/dev1/result/write");
}

#[test]
fn commands_for_an_endpoint_without_writable_points_are_ignored() {
    let mut s = state();
    let push = br#"[{"id":1,"payload":{}}]"#;
    let effects = s.message(
        "kp1/gw-v1/cex/gw/command/write/status",
        push,
        Instant::now(),
        0.5,
    );
    assert!(effects.is_empty());
}

#[test]
fn a_changed_configuration_is_handed_over_once_and_an_unchanged_one_not_at_all() {
    let mut s = state();
    let now = Instant::now();
    let topic = "kp1/gw-v1/cmx/gw/config/json/status";
    let same = br#"{"configId":"c1","config":{"devices":[]}}"#;
    assert!(s.message(topic, same, now, 0.5).is_empty());
    let new = br#"{"configId":"c2","config":{"devices":[]}}"#;
    let effects = s.message(topic, new, now, 0.5);
    let [Effect::ConfigPushed(rc)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(rc.config_id, "c2");
    // The answer to our own request repeats it while it is being judged: not again.
    assert!(s
        .message("kp1/gw-v1/cmx/gw/config/json/3/status", new, now, 0.5)
        .is_empty());
}

#[test]
fn a_refused_configuration_is_reported_on_applied_with_its_reason() {
    let mut s = state();
    let now = Instant::now();
    let new = br#"{"configId":"c2","config":{"devices":[]}}"#;
    s.message("kp1/gw-v1/cmx/gw/config/json/status", new, now, 0.5);
    let p = publishes(&s.config_refused("c2", 400, "devices[0].name: missing"));
    assert_eq!(p[0].0, "kp1/gw-v1/cmx/gw/applied/json");
    assert_eq!(
        serde_json::from_str::<Value>(&p[0].1).unwrap(),
        json!({"configId": "c2", "statusCode": 400, "reasonPhrase": "devices[0].name: missing"})
    );
    // Pushed again later, it is judged again.
    assert_eq!(
        s.message("kp1/gw-v1/cmx/gw/config/json/status", new, now, 0.5)
            .len(),
        1
    );
}

#[test]
fn an_app_version_named_like_an_extension_is_routed_by_the_extension_level() {
    // The old substring dispatch took any topic containing "/cmx/" for a configuration.
    let cmx_app = ep("cmx", "dev1");
    let mut s = ClientState::new(
        vec![cmx_app.clone()],
        BTreeMap::new(),
        Duration::from_secs(5),
    );
    let now = Instant::now();
    let effects = s.batches_leased(vec![batch(cmx_app.clone(), &["{}"])], now);
    let [Effect::SendBatch { topic, .. }] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    assert_eq!(topic, "kp1/cmx/dcx/dev1/json/1");
    let acked = s.message(&format!("{topic}/status"), b"{}", now, 0.5);
    assert_eq!(acked, vec![Effect::Ack(backlog(cmx_app))]);
}

#[test]
fn configuration_messages_for_another_endpoint_are_ignored() {
    let mut s = state();
    let new = br#"{"configId":"c2","config":{"devices":[]}}"#;
    let effects = s.message(
        "kp1/gw-v1/cmx/someone-else/config/json/status",
        new,
        Instant::now(),
        0.5,
    );
    assert!(effects.is_empty());
}

#[test]
fn request_ids_of_other_requests_count_up_across_connects() {
    let mut s = state();
    let first = publishes(&s.connected());
    let second = publishes(&s.connected());
    assert!(first[0].0.ends_with("/1"));
    assert!(second[0].0.ends_with("/4"), "{second:?}");
}

#[test]
fn the_dcp_payload_is_a_json_array_of_the_samples() {
    assert_eq!(dcp_payload(&[]), b"[]");
    let p = dcp_payload(&[r#"{"a":1}"#.into(), r#"{"b":2}"#.into()]);
    assert_eq!(
        serde_json::from_slice::<Value>(&p).unwrap(),
        json!([{"a": 1}, {"b": 2}])
    );
}

#[test]
fn requests_are_numbered_from_the_chosen_start_and_an_old_sessions_number_is_not_taken() {
    let first = RequestId::new(1_000_000).unwrap();
    let mut s = state().with_first_id(first);
    let now = Instant::now();
    let topic = send_one(&mut s, now);
    assert_eq!(topic, "kp1/app-v1/dcx/dev1/json/1000000");
    // A late answer to request 1 of the previous session (numbered from 1) is ignored.
    assert!(s
        .message("kp1/app-v1/dcx/dev1/json/1/status", b"{}", now, 0.5)
        .is_empty());
    assert_eq!(s.outstanding(), 1);
    let effects = s.message(&format!("{topic}/status"), b"{}", now, 0.5);
    assert_eq!(effects, vec![Effect::Ack(backlog(dev()))]);
    // Requests other than batches start there too.
    let requests = publishes(&s.connected());
    assert!(requests.len() >= 3, "{requests:?}");
    for (topic, _) in requests {
        let id: u32 = topic.rsplit('/').next().unwrap().parse().unwrap();
        assert!((1_000_000..1_000_010).contains(&id), "{topic}");
    }
}
