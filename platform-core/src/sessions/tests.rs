//! Tests of the session hub: copies, pushes, observe flags, first use.
use super::*;

fn attach(hub: &Hub, client: &str) -> Attached {
    hub.register(client, Identity::Basic(client.to_owned()))
}

#[tokio::test]
async fn copies_reach_matching_subscribers_but_not_the_sender() {
    let hub = Hub::new();
    let a = attach(&hub, "a");
    let b = attach(&hub, "b");
    let c = attach(&hub, "c");
    a.registration
        .set_filters(vec![("kp1/#".into(), QoS::AtLeastOnce)]);
    b.registration
        .set_filters(vec![("kp1/+/dcx/+/json/+/status".into(), QoS::AtMostOnce)]);
    let n = hub.fan_out(
        a.registration.id,
        "kp1/v/dcx/t/json/1/status",
        &Bytes::from_static(b""),
    );
    assert_eq!(n, 1);
    assert_eq!(b.inbox.try_recv().unwrap().qos, QoS::AtMostOnce);
    assert!(a.inbox.try_recv().is_none());
    assert!(c.inbox.try_recv().is_none());
}

#[tokio::test]
async fn anonymous_sessions_watch_only_the_tokens_they_used() {
    let hub = Hub::new();
    let anon = hub.register("anon", Identity::Anonymous);
    let user = hub.register("user", Identity::Basic("u".into()));
    for a in [&anon, &user] {
        a.registration
            .set_filters(vec![("kp1/#".into(), QoS::AtMostOnce)]);
    }
    hub.record_use(anon.registration.id, "ep-a", "v", "tok-a");
    let b = Bytes::new();
    assert_eq!(
        hub.fan_out(u64::MAX, "kp1/v/cex/tok-b/command/x/status", &b),
        1
    );
    assert!(anon.inbox.try_recv().is_none(), "not its token");
    assert!(user.inbox.try_recv().is_some());
    assert_eq!(
        hub.fan_out(u64::MAX, "kp1/v/cex/tok-a/command/x/status", &b),
        2
    );
    let tokens = vec![("v".to_owned(), "tok-b".to_owned())];
    let n = hub.push(
        "ep-b",
        "cmx",
        &tokens,
        |a, t| format!("kp1/{a}/cmx/{t}/config/json/status"),
        &b,
    );
    assert_eq!(
        n, 1,
        "only the authenticated watcher gets another endpoint's push"
    );
}

#[tokio::test]
async fn a_full_session_loses_messages_without_blocking() {
    let hub = Hub::new();
    let s = attach(&hub, "s");
    s.registration
        .set_filters(vec![("#".into(), QoS::AtMostOnce)]);
    for _ in 0..OUTBOUND_CAPACITY + 5 {
        hub.fan_out(u64::MAX, "t", &Bytes::new());
    }
    assert_eq!(hub.dropped(), 5);
}

#[tokio::test]
async fn a_session_queue_is_bounded_by_bytes_too() {
    let hub = Hub::new();
    let s = attach(&hub, "s");
    s.registration
        .set_filters(vec![("#".into(), QoS::AtMostOnce)]);
    let big = Bytes::from(vec![0u8; OUTBOUND_MAX_BYTES / 2 + 1]);
    assert_eq!(hub.fan_out(u64::MAX, "t", &big), 1);
    assert_eq!(hub.fan_out(u64::MAX, "t", &big), 0, "over the byte bound");
    assert!(s.inbox.try_recv().is_some());
    assert_eq!(hub.fan_out(u64::MAX, "t", &big), 1, "room again once taken");
    assert_eq!(hub.dropped(), 1);
}

#[tokio::test]
async fn pushes_reach_users_of_the_token_and_subscribers_only() {
    let hub = Hub::new();
    let user = attach(&hub, "user");
    let watcher = attach(&hub, "watcher");
    let other = attach(&hub, "other");
    hub.record_use(user.registration.id, "ep1", "v1", "tok");
    hub.record_use(other.registration.id, "ep2", "v1", "tok2");
    watcher
        .registration
        .set_filters(vec![("kp1/v1/cex/tok/#".into(), QoS::AtMostOnce)]);
    let tokens = vec![("v1".to_owned(), "tok".to_owned())];
    let n = hub.push(
        "ep1",
        "cex",
        &tokens,
        |avn, t| format!("kp1/{avn}/cex/{t}/command/reboot/status"),
        &Bytes::from_static(b"[]"),
    );
    assert_eq!(n, 2);
    let got = user.inbox.try_recv().unwrap();
    assert_eq!(got.topic, "kp1/v1/cex/tok/command/reboot/status");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(watcher.inbox.try_recv().unwrap().qos, QoS::AtMostOnce);
    assert!(other.inbox.try_recv().is_none());
}

#[tokio::test]
async fn cutting_a_token_or_identity_fires_only_the_matching_sessions() {
    let hub = Hub::new();
    let a = hub.register("a", Identity::Basic("alice".into()));
    let b = hub.register("b", Identity::Basic("bob".into()));
    hub.record_use(a.registration.id, "ep1", "v1", "tok1");
    assert_eq!(hub.cut_token("tok1"), 1);
    assert!(a.kill.is_cancelled());
    assert!(!b.kill.is_cancelled());
    assert_eq!(hub.cut_identity(&Identity::Basic("bob".into())), 1);
    assert!(b.kill.is_cancelled());
}

#[test]
fn a_second_connect_with_the_same_client_id_ends_the_first() {
    let hub = Hub::new();
    let first = attach(&hub, "dev");
    let second = attach(&hub, "dev");
    assert!(first.kill.is_cancelled());
    assert!(!hub.client_gone("dev", second.registration.id));
    drop(first);
    assert!(hub.client_gone("dev", second.registration.id));
    assert_eq!(hub.sessions(), 1);
}

#[test]
fn parked_sessions_are_taken_once() {
    let hub = Hub::new();
    hub.park("dev", Session::new());
    assert!(hub.take_parked("dev").is_some());
    assert!(hub.take_parked("dev").is_none());
}

#[tokio::test]
async fn observe_false_stops_pushes_of_that_extension_until_observe_true() {
    let hub = Hub::new();
    let a = attach(&hub, "a");
    let id = a.registration.id;
    assert!(hub.record_use(id, "ep1", "v1", "tok"), "first use");
    assert!(
        !hub.record_use(id, "ep1", "v1", "tok"),
        "not the first any more"
    );
    let tokens = vec![("v1".to_owned(), "tok".to_owned())];
    let push = |instance: &str| {
        hub.push(
            "ep1",
            instance,
            &tokens,
            |a, t| format!("kp1/{a}/{instance}/{t}/x/status"),
            &Bytes::new(),
        )
    };
    hub.set_observe(id, "ep1", "cex", false);
    assert_eq!(push("cex"), 0);
    assert!(!hub.send_to(id, "ep1", "cex", "t".into(), Bytes::new()));
    assert_eq!(push("cmx"), 1, "another extension still pushes");
    hub.set_observe(id, "ep1", "cex", true);
    assert_eq!(push("cex"), 1);
    assert!(hub.send_to(id, "ep1", "cex", "t".into(), Bytes::new()));
    let got: Vec<String> = std::iter::from_fn(|| a.inbox.try_recv().map(|m| m.topic)).collect();
    assert_eq!(
        got,
        ["kp1/v1/cmx/tok/x/status", "kp1/v1/cex/tok/x/status", "t"]
    );
}

#[tokio::test]
async fn bound_sessions_act_for_and_watch_only_their_reach() {
    let hub = Hub::new();
    let reach = Reach {
        versions: ["a-v1".to_owned()].into(),
        tokens: HashSet::new(),
    };
    let bound = hub.register_scoped("bound", Identity::Basic("b".into()), Some(reach));
    let free = attach(&hub, "free");
    for s in [&bound, &free] {
        s.registration
            .set_filters(vec![("kp1/#".into(), QoS::AtMostOnce)]);
    }
    assert!(hub.allows(bound.registration.id, "a-v1", "t"));
    assert!(!hub.allows(bound.registration.id, "b-v1", "t"));
    assert!(hub.allows(free.registration.id, "b-v1", "t"));
    assert!(
        !hub.allows(u64::MAX, "a-v1", "t"),
        "an unknown session acts for nothing"
    );
    let b = Bytes::new();
    assert_eq!(hub.fan_out(u64::MAX, "kp1/b-v1/dcx/t/json/1/status", &b), 1);
    assert!(
        bound.inbox.try_recv().is_none(),
        "another application's reply"
    );
    assert!(free.inbox.try_recv().is_some());
    let tokens = vec![("b-v1".to_owned(), "t".to_owned())];
    let n = hub.push(
        "ep-t",
        "cex",
        &tokens,
        |a, t| format!("kp1/{a}/cex/{t}/command/x"),
        &b,
    );
    assert_eq!(
        n, 1,
        "only the unbound watcher gets another application's push"
    );
    assert!(bound.inbox.try_recv().is_none());
    assert_eq!(hub.fan_out(u64::MAX, "kp1/a-v1/dcx/t/json/1/status", &b), 2);
}
