use super::*;
use proptest::prelude::*;

fn parse(t: &str) -> Kp1Topic {
    Kp1Topic::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"))
}

#[test]
fn a_request_with_request_id_splits_into_its_parts() {
    let t = parse("kp1/demo-v1/dcx/tok1/json/42");
    assert_eq!(t.app_version.as_str(), "demo-v1");
    assert_eq!(t.extension.as_str(), "dcx");
    assert_eq!(t.token.as_str(), "tok1");
    assert_eq!(t.resource, "json");
    assert_eq!(t.request_id.map(RequestId::get), Some(42));
    assert_eq!(t.direction, Direction::Request);
}

#[test]
fn a_request_without_request_id_keeps_a_multi_level_resource() {
    let t = parse("kp1/app_1/epmx/t/get/keys");
    assert_eq!(t.resource, "get/keys");
    assert_eq!(t.request_id, None);
}

#[test]
fn status_and_error_suffixes_set_the_direction() {
    let s = parse("kp1/a/dcx/t/json/7/status");
    assert_eq!(
        (s.direction, s.request_id.map(RequestId::get)),
        (Direction::Status, Some(7))
    );
    let e = parse("kp1/a/epmx/t/update/keys/error");
    assert_eq!(
        (e.direction, e.resource.as_str()),
        (Direction::Error, "update/keys")
    );
}

#[test]
fn a_resource_named_status_alone_is_a_resource() {
    let t = parse("kp1/a/x/t/status");
    assert_eq!(
        (t.direction, t.resource.as_str()),
        (Direction::Request, "status")
    );
}

#[test]
fn a_number_right_after_the_token_is_the_resource_not_a_request_id() {
    let t = parse("kp1/a/dcx/t/42");
    assert_eq!((t.resource.as_str(), t.request_id), ("42", None));
}

#[test]
fn request_id_zero_is_rejected() {
    assert_eq!(
        Kp1Topic::parse("kp1/a/dcx/t/json/0"),
        Err(TopicError::RequestId("0".into()))
    );
}

#[test]
fn request_id_above_i32_max_is_rejected() {
    assert!(Kp1Topic::parse("kp1/a/dcx/t/json/2147483647").is_ok());
    assert_eq!(
        Kp1Topic::parse("kp1/a/dcx/t/json/2147483648"),
        Err(TopicError::RequestId("2147483648".into()))
    );
    assert!(matches!(
        Kp1Topic::parse("kp1/a/dcx/t/json/99999999999999999999"),
        Err(TopicError::RequestId(_))
    ));
}

#[test]
fn malformed_topics_are_rejected_with_the_reason() {
    type Check = fn(&TopicError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("kp2/a/dcx/t/json", |e| matches!(e, TopicError::NotKp1(_))),
        ("kp1/a/dcx/t", |e| matches!(e, TopicError::TooShort(_))),
        ("kp1//dcx/t/json", |e| {
            matches!(e, TopicError::EmptyLevel(_))
        }),
        ("kp1/a/dcx/t/json/", |e| {
            matches!(e, TopicError::EmptyLevel(_))
        }),
        ("kp1/A/dcx/t/json", |e| {
            matches!(e, TopicError::AppVersionName(_))
        }),
        ("kp1/a/DCX/t/json", |e| {
            matches!(e, TopicError::ExtensionInstance(_))
        }),
        ("kp1/a/dcx/t.x/json", |e| {
            matches!(e, TopicError::EndpointToken(_))
        }),
        ("kp1/a/dcx/+/json", |e| {
            matches!(e, TopicError::EndpointToken(_))
        }),
        ("kp1/a/dcx/#/json", |e| {
            matches!(e, TopicError::EndpointToken(_))
        }),
        ("", |e| matches!(e, TopicError::NotKp1(_))),
    ];
    for (topic, ok) in cases {
        match Kp1Topic::parse(topic) {
            Err(e) => assert!(ok(&e), "{topic}: unexpected error {e:?}"),
            Ok(t) => panic!("{topic}: parsed as {t:?}"),
        }
    }
}

#[test]
fn response_topics_are_the_request_topic_plus_a_suffix() {
    let t = parse("kp1/a/dcx/t/json/3");
    assert_eq!(t.status_topic(), "kp1/a/dcx/t/json/3/status");
    assert_eq!(t.error_topic(), "kp1/a/dcx/t/json/3/error");
    let t = parse("kp1/a/dcx/t/json");
    assert_eq!(t.error_topic(), "kp1/a/dcx/t/json/error");
}

#[test]
fn token_debug_output_hides_most_of_the_token() {
    let t = EndpointToken::new("secret-token").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{t:?}"), "EndpointToken(secr…)");
}

#[test]
fn error_payload_has_the_rfc_field_names() {
    let p = Kp1Error::bad_request("bad json").to_payload();
    let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
    assert_eq!(
        v,
        serde_json::json!({"statusCode": 400, "reasonPhrase": "bad json"})
    );
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,12}"
}
fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_~:-]{1,16}"
}
fn resource() -> impl Strategy<Value = String> {
    // levels that are not pure digits (those would be request IDs) and not status/error
    prop::collection::vec("[a-z][a-z0-9_]{0,8}", 1..4)
        .prop_filter("suffix words", |v| {
            v.last().is_some_and(|l| l != "status" && l != "error")
        })
        .prop_map(|v| v.join("/"))
}

/// The level-by-level parse `Kp1Topic::parse` had before `Kp1TopicRef` (one `Vec` and
/// an owned string per part): the borrowed parse must agree with it on any input.
fn parse_by_levels(topic: &str) -> Result<Kp1Topic, TopicError> {
    let mut levels: Vec<&str> = topic.split('/').collect();
    if levels.first() != Some(&PREFIX) {
        return Err(TopicError::NotKp1(topic.to_owned()));
    }
    if levels.iter().any(|l| l.is_empty()) {
        return Err(TopicError::EmptyLevel(topic.to_owned()));
    }
    // A `status`/`error` suffix needs a resource before it, else it *is* the resource.
    let direction = match levels.last() {
        Some(&"status") if levels.len() > 5 => Direction::Status,
        Some(&"error") if levels.len() > 5 => Direction::Error,
        _ => Direction::Request,
    };
    if direction != Direction::Request {
        levels.pop();
    }
    let mut request_id = None;
    if let Some(last) = levels.last() {
        if levels.len() > 5 && last.bytes().all(|b| b.is_ascii_digit()) {
            let id = last
                .parse::<u32>()
                .ok()
                .and_then(RequestId::new)
                .ok_or_else(|| TopicError::RequestId((*last).to_owned()))?;
            request_id = Some(id);
            levels.pop();
        }
    }
    if levels.len() < 5 {
        return Err(TopicError::TooShort(topic.to_owned()));
    }
    Ok(Kp1Topic {
        app_version: AppVersionName::new(levels[1])?,
        extension: ExtensionInstance::new(levels[2])?,
        token: EndpointToken::new(levels[3])?,
        resource: levels[4..].join("/"),
        request_id,
        direction,
    })
}

/// Topic-like strings: the prefix or not, and levels that are names, tokens, digits,
/// suffix words, empty, or carry forbidden characters.
fn topicish() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        "[a-z0-9_-]{1,6}",
        "[A-Za-z0-9.+#~]{0,4}",
        "[0-9]{1,11}",
        Just("status".to_owned()),
        Just("error".to_owned()),
        Just(String::new()),
    ];
    (
        prop_oneof![Just("kp1"), Just("kp2"), Just("")],
        prop::collection::vec(level, 0..9),
    )
        .prop_map(|(head, levels)| {
            std::iter::once(head.to_owned())
                .chain(levels)
                .collect::<Vec<_>>()
                .join("/")
        })
}

proptest! {
    #[test]
    fn the_borrowed_parse_agrees_with_the_level_by_level_one(topic in topicish()) {
        let borrowed = Kp1TopicRef::parse(&topic);
        let owned = borrowed.clone().map(|t| Kp1Topic {
            app_version: AppVersionName::new(t.app_version).unwrap_or_else(|e| panic!("{e}")),
            extension: ExtensionInstance::new(t.extension).unwrap_or_else(|e| panic!("{e}")),
            token: EndpointToken::new(t.token).unwrap_or_else(|e| panic!("{e}")),
            resource: t.resource.to_owned(),
            request_id: t.request_id,
            direction: t.direction,
        });
        prop_assert_eq!(&owned, &parse_by_levels(&topic));
        // Both build the same response topics.
        if let (Ok(b), Ok(o)) = (borrowed, owned) {
            prop_assert_eq!(b.status_topic(), o.status_topic());
            prop_assert_eq!(b.error_topic(), o.error_topic());
        }
    }

    #[test]
    fn format_then_parse_is_identity(
        avn in name(), ext in name(), tok in token(), res in resource(),
        rid in prop::option::of(1u32..=MAX_REQUEST_ID),
        dir in prop::sample::select(vec![Direction::Request, Direction::Status, Direction::Error]),
    ) {
        let t = Kp1Topic {
            app_version: AppVersionName::new(&avn).unwrap_or_else(|e| panic!("{e}")),
            extension: ExtensionInstance::new(&ext).unwrap_or_else(|e| panic!("{e}")),
            token: EndpointToken::new(&tok).unwrap_or_else(|e| panic!("{e}")),
            resource: res,
            request_id: rid.and_then(RequestId::new),
            direction: dir,
        };
        prop_assert_eq!(Kp1Topic::parse(&t.to_string()), Ok(t));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,80}") {
        let _ = Kp1Topic::parse(&s);
    }
}

#[test]
fn request_ids_count_up_and_wrap_around_to_one() {
    assert_eq!(RequestId::FIRST.next().get(), 2);
    let last = RequestId::new(MAX_REQUEST_ID).unwrap();
    assert_eq!(last.next(), RequestId::FIRST);
}
