//! MQTT topic names and filters (MQTT 3.1.1 §4.7): validation and matching, pure.

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic")]
    Empty,
    #[error("topic {0:?} contains a NUL character")]
    Nul(String),
    #[error("publish topic {0:?} contains a wildcard")]
    WildcardInTopicName(String),
    #[error("filter {0:?}: '#' must be the last level, alone")]
    BadMultiLevel(String),
    #[error("filter {0:?}: '+' must occupy a whole level")]
    BadSingleLevel(String),
}

/// A topic name in PUBLISH: non-empty, no wildcards, no NUL (MQTT 3.1.1 §4.7.1, §1.5.3).
pub fn validate_topic_name(topic: &str) -> Result<(), FilterError> {
    if topic.is_empty() {
        return Err(FilterError::Empty);
    }
    if topic.contains('\0') {
        return Err(FilterError::Nul(topic.to_owned()));
    }
    if topic.contains(['+', '#']) {
        return Err(FilterError::WildcardInTopicName(topic.to_owned()));
    }
    Ok(())
}

/// A topic filter in SUBSCRIBE/UNSUBSCRIBE (MQTT 3.1.1 §4.7.1).
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul(filter.to_owned()));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(FilterError::BadMultiLevel(filter.to_owned()));
        }
        if level.contains('+') && *level != "+" {
            return Err(FilterError::BadSingleLevel(filter.to_owned()));
        }
    }
    Ok(())
}

/// Does `filter` (already valid) match `topic` (a valid topic name)?
pub fn matches(filter: &str, topic: &str) -> bool {
    // §4.7.2: wildcards at the first level do not match topics starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_spec_says() {
        let yes = [
            ("kp1/+/dcx/+/json/+/status", "kp1/a/dcx/t/json/1/status"),
            ("kp1/#", "kp1/a/dcx/t/json"),
            ("kp1/a/#", "kp1/a"),
            ("#", "kp1/a"),
            ("a/+", "a/"),
            ("a", "a"),
        ];
        let no = [
            ("kp1/+/dcx", "kp1/a/dcx/t"),
            ("kp1/a", "kp1/b"),
            ("a/+", "a"),
            ("+/x", "$SYS/x"),
            ("#", "$SYS/x"),
            ("a/b", "a/b/c"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn invalid_filters_and_topic_names_are_rejected() {
        for f in ["", "a/#/b", "a#", "a/b+", "+a", "a\0"] {
            assert!(validate_filter(f).is_err(), "{f:?}");
        }
        for f in ["#", "+", "a/+/b/#", "/"] {
            assert!(validate_filter(f).is_ok(), "{f:?}");
        }
        for t in ["", "a/+", "a/#", "x\0"] {
            assert!(validate_topic_name(t).is_err(), "{t:?}");
        }
        assert!(validate_topic_name("kp1/a/dcx/t/json").is_ok());
    }
}
