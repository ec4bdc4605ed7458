//! The domain's word for a device on the platform: an [`Endpoint`] is an application
//! version and a token, the pair every 1/KP topic of that device carries.
//!
//! Sources tag samples with it, the buffer groups by it, the upstream builds its topics
//! from it (through platform-core's [`Kp1Topic`] codec, never by hand).

use platform_core::kp1::{AppVersionName, EndpointToken, ExtensionInstance, Kp1Topic, RequestId};

/// One 1/KP endpoint: `kp1/<app_version>/<extension>/<token>/...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub app_version: AppVersionName,
    pub token: EndpointToken,
}

impl Endpoint {
    pub fn new(app_version: AppVersionName, token: EndpointToken) -> Self {
        Self { app_version, token }
    }

    /// The request topic of `resource` on `extension` for this endpoint.
    pub fn topic(
        &self,
        extension: &ExtensionInstance,
        resource: &str,
        request_id: Option<RequestId>,
    ) -> Kp1Topic {
        Kp1Topic::request(
            self.app_version.clone(),
            extension.clone(),
            self.token.clone(),
            resource,
            request_id,
        )
    }

    /// The endpoint a parsed topic is about.
    pub fn of_topic(topic: &Kp1Topic) -> Self {
        Self::new(topic.app_version.clone(), topic.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_built_for_an_endpoint_parses_back_to_the_same_endpoint() {
        let ep = Endpoint::new(
            AppVersionName::new("cmx").unwrap(),
            EndpointToken::new("dev-1").unwrap(),
        );
        let dcx = ExtensionInstance::new("dcx").unwrap();
        let t = ep.topic(&dcx, "json", RequestId::new(7)).request_topic();
        assert_eq!(t, "kp1/cmx/dcx/dev-1/json/7");
        assert_eq!(Endpoint::of_topic(&Kp1Topic::parse(&t).unwrap()), ep);
    }
}
