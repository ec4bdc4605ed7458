//! External extension instances: a client's request becomes a 4/ESP `ClientData` on NATS,
//! the extension service's `ExtensionData` becomes the `/status` or `/error` answer, and an
//! `ExtensionData` nobody waits for becomes a push to the endpoint's live sessions.

use std::time::Duration;

use bytes::Bytes;

use crate::bus::avro::{ClientData, ExtensionData};
use crate::bus::nats::{EspError, NatsBus};
use crate::kp1::{Kp1Error, Kp1TopicRef};
use crate::sessions::Hub;
use crate::store::now_ms;

/// Forwards one request to the external instance `t.extension` and waits for its answer.
/// No NATS or NATS down → 503 at once; no answer within `timeout` → 504.
pub async fn request(
    remote: Option<&NatsBus>,
    t: &Kp1TopicRef<'_>,
    endpoint_id: String,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Kp1Error> {
    let instance = t.extension;
    let Some(bus) = remote else {
        return Err(Kp1Error::new(
            503,
            format!("extension instance {instance:?} is external and NATS is not configured"),
        ));
    };
    let data = ClientData {
        correlation_id: uuid::Uuid::new_v4().to_string(),
        timestamp_ms: now_ms(),
        timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        app_version: t.app_version.to_owned(),
        endpoint_id: Some(endpoint_id),
        resource_path: format!("/{}", t.resource),
        request_id: t.request_id.and_then(|r| i32::try_from(r.get()).ok()),
        payload: payload.to_vec(),
        config_name: None,
    };
    match bus.esp_request(instance, data, timeout).await {
        Ok(x) => answer(x),
        Err(EspError::Unavailable) => Err(Kp1Error::new(
            503,
            format!("extension service {instance:?} is unreachable: NATS is not connected"),
        )),
        Err(EspError::Timeout(d)) => Err(Kp1Error::new(
            504,
            format!(
                "extension service {instance:?} did not answer within {} ms",
                d.as_millis()
            ),
        )),
        Err(EspError::Encode(e)) => {
            log::error!("esp: ClientData for {instance:?} not encoded: {e}");
            Err(Kp1Error::internal())
        }
    }
}

/// The client's answer from the service's `ExtensionData`: a 2xx status is a success with
/// its payload; anything else an error with the service's status code and reason.
pub fn answer(x: ExtensionData) -> Result<Vec<u8>, Kp1Error> {
    match u16::try_from(x.status_code) {
        Ok(200..=299) => Ok(x.payload.unwrap_or_default()),
        Ok(code @ 400..=599) => Err(Kp1Error::new(
            code,
            x.reason_phrase
                .unwrap_or_else(|| format!("extension answered {code}")),
        )),
        _ => Err(Kp1Error::new(
            502,
            format!(
                "extension answered with status {} (not a 2xx, 4xx or 5xx code)",
                x.status_code
            ),
        )),
    }
}

/// Delivers an unsolicited `ExtensionData` (a push) to the live sessions that used its
/// endpoint, on `kp1/<app version>/<instance>/<token>/<resource path>`. Returns how many
/// sessions got it; a push that names no endpoint or instance, or is not a success, is
/// logged and reaches nobody.
pub fn push(hub: &Hub, x: ExtensionData) -> usize {
    let (Some(endpoint), Some(instance)) = (&x.endpoint_id, &x.extension_instance) else {
        log::warn!(
            "esp: push without endpointId or extensionInstanceName ignored (correlation {})",
            x.correlation_id
        );
        return 0;
    };
    if !(200..300).contains(&x.status_code) {
        log::warn!(
            "esp: late or unsolicited answer {} {:?} for endpoint {endpoint} ignored",
            x.status_code,
            x.reason_phrase
        );
        return 0;
    }
    let resource = x.resource_path.trim_start_matches('/');
    let payload = Bytes::from(x.payload.clone().unwrap_or_default());
    let sent = hub.push(
        endpoint,
        instance,
        &[],
        |avn, token| format!("kp1/{avn}/{instance}/{token}/{resource}"),
        &payload,
    );
    if sent == 0 {
        log::info!("esp: push from {instance} for endpoint {endpoint}: no live session");
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(status: i32, payload: Option<&[u8]>, reason: Option<&str>) -> ExtensionData {
        ExtensionData {
            correlation_id: "c".into(),
            timestamp_ms: 0,
            timeout_ms: 0,
            app_version: None,
            extension_instance: Some("ext".into()),
            endpoint_id: Some("e".into()),
            resource_path: "/json".into(),
            request_id: Some(1),
            payload: payload.map(<[u8]>::to_vec),
            status_code: status,
            reason_phrase: reason.map(str::to_owned),
        }
    }

    #[test]
    fn the_services_status_decides_status_or_error() {
        assert_eq!(answer(data(200, Some(b"{}"), None)), Ok(b"{}".to_vec()));
        assert_eq!(answer(data(204, None, None)), Ok(Vec::new()));
        assert_eq!(
            answer(data(400, None, Some("bad sample"))),
            Err(Kp1Error::new(400, "bad sample"))
        );
        assert_eq!(answer(data(503, None, None)).unwrap_err().status, 503);
        assert_eq!(answer(data(302, None, None)).unwrap_err().status, 502);
        assert_eq!(answer(data(-1, None, None)).unwrap_err().status, 502);
    }

    #[tokio::test]
    async fn no_nats_is_503_not_silence() {
        let t = crate::kp1::Kp1TopicRef::parse("kp1/v/ext/tok/json/3").unwrap();
        let e = request(None, &t, "e".into(), b"[]", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.status, 503);
    }

    #[test]
    fn a_push_without_endpoint_reaches_nobody() {
        let hub = Hub::new();
        let mut x = data(200, Some(b"x"), None);
        x.endpoint_id = None;
        assert_eq!(push(&hub, x), 0);
        assert_eq!(push(&hub, data(500, None, None)), 0);
    }
}
