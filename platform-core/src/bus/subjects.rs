//! NATS subject names of Kaa's inter-service messaging (3/ISM) for the core's events and
//! 4/ESP traffic (pure).

use super::Event;

/// The service instance names the core answers to and publishes as, and its replica ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// KPC: originator of connectivity events, receiver of `ExtensionData`.
    pub kpc: String,
    /// EPR: originator of lifecycle events.
    pub epr: String,
    /// Time series transmitter: originator of 14/TSTP events.
    pub epts: String,
    /// This process among the replicas of the same instances (session affinity).
    pub replica_id: String,
}

/// The subject an event is broadcast on.
pub fn event(names: &Names, ev: &Event) -> String {
    let (originator, tail) = match ev {
        Event::Connected { .. } => (names.kpc.as_str(), "connectivity.connected".to_owned()),
        Event::Disconnected { .. } => (names.kpc.as_str(), "connectivity.disconnected".into()),
        Event::Registered { .. } => (names.epr.as_str(), "lifecycle.registered".into()),
        Event::Unregistered { .. } => (names.epr.as_str(), "lifecycle.unregistered".into()),
        Event::AppVersionUpdated { .. } => {
            (names.epr.as_str(), "lifecycle.appversion-updated".into())
        }
        Event::DataSamples { instance, .. } => (
            instance.as_str(),
            "data-collection.data-samples-received".into(),
        ),
        Event::TimeSeries { series, .. } => (
            names.epts.as_str(),
            format!("data-collection.data-points-received.{}", token(series)),
        ),
    };
    format!("kaa.v1.events.{originator}.endpoint.{tail}")
}

/// Where `ClientData` for extension `instance` goes (its instance-wide subject).
pub fn client_data(instance: &str) -> String {
    format!("kaa.v1.service.{instance}.esp.ClientData")
}

/// This replica's own `ExtensionData` subject: the `replyTo` of every `ClientData` it sends.
pub fn replica_extension_data(replica_id: &str) -> String {
    format!("kaa.v1.replica.{replica_id}.esp.ExtensionData")
}

/// The KPC instance-wide `ExtensionData` subject (pushes without session affinity).
pub fn service_extension_data(kpc: &str) -> String {
    format!("kaa.v1.service.{kpc}.esp.ExtensionData")
}

/// The connectivity events of every replica of KPC `kpc` (to learn who holds what).
pub fn connectivity_events(kpc: &str) -> String {
    format!("kaa.v1.events.{kpc}.endpoint.connectivity.*")
}

/// Where replica `replica_id` answers which endpoints it holds (this project's own
/// message, JSON: `{"endpoints": [...]}` → `{"held": [...]}`).
pub fn presence(replica_id: &str) -> String {
    format!("kaa.v1.replica.{replica_id}.kpgw.presence")
}

/// Where replica `replica_id` takes REST calls about the endpoints whose sessions it
/// holds, passed on by another replica (this project's own message, JSON).
pub fn forwarded_rest(replica_id: &str) -> String {
    format!("kaa.v1.replica.{replica_id}.kpgw.rest")
}

/// Where the registry owner `replica_id` answers with its whole registry (JSON).
pub fn registry(replica_id: &str) -> String {
    format!("kaa.v1.replica.{replica_id}.kpgw.registry")
}

/// Where the registry owner says its registry changed (no payload).
pub fn registry_changed(kpc: &str) -> String {
    format!("kaa.v1.service.{kpc}.kpgw.registry-changed")
}

/// Where 16/ECAP provider `provider` takes endpoint token validation requests.
pub fn ecap_token_request(provider: &str) -> String {
    format!("kaa.v1.service.{provider}.ecap.ep-token-request")
}

/// One subject token from a free-form name: characters NATS gives a meaning to (`.`, `*`,
/// `>`, whitespace) and `%` are percent-encoded, so a series name stays one token. The
/// event body carries the name unchanged.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// Is `s` usable as one subject token as it is (instance names, replica IDs)?
pub fn is_plain_token(s: &str) -> bool {
    !s.is_empty() && token(s) == s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            kpc: "kpc".into(),
            epr: "epr".into(),
            epts: "epts".into(),
            replica_id: "r1".into(),
        }
    }

    #[test]
    fn subjects_follow_the_kaa_naming() {
        let n = names();
        let ep = vec![("e".to_owned(), "v".to_owned())];
        assert_eq!(
            event(
                &n,
                &Event::Disconnected {
                    endpoints: ep,
                    timestamp_ms: 0
                }
            ),
            "kaa.v1.events.kpc.endpoint.connectivity.disconnected"
        );
        let reg = Event::Registered {
            endpoint_id: "e".into(),
            app_version: "v".into(),
            timestamp_ms: 0,
        };
        assert_eq!(
            event(&n, &reg),
            "kaa.v1.events.epr.endpoint.lifecycle.registered"
        );
        let ds = Event::DataSamples {
            instance: "dcx2".into(),
            endpoint_id: "e".into(),
            app_version: "v".into(),
            samples: vec![],
            timestamp_ms: 0,
        };
        assert_eq!(
            event(&n, &ds),
            "kaa.v1.events.dcx2.endpoint.data-collection.data-samples-received"
        );
        let ts = Event::TimeSeries {
            endpoint_id: "e".into(),
            app_version: "v".into(),
            series: "temp.c".into(),
            points: vec![],
            timestamp_ms: 0,
        };
        assert_eq!(
            event(&n, &ts),
            "kaa.v1.events.epts.endpoint.data-collection.data-points-received.temp%2Ec"
        );
        assert_eq!(client_data("ext"), "kaa.v1.service.ext.esp.ClientData");
        assert_eq!(
            replica_extension_data("r1"),
            "kaa.v1.replica.r1.esp.ExtensionData"
        );
    }

    #[test]
    fn tokens_never_split_or_wildcard_a_subject() {
        assert_eq!(token("a b>*%"), "a%20b%3E%2A%25");
        assert_eq!(token(""), "%00");
        assert!(is_plain_token("kpc-1"));
        assert!(!is_plain_token("a.b"));
        assert!(!is_plain_token(""));
    }
}
