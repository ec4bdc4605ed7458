//! Fuzz: the server-side MQTT session fed by the packet codec (bytes from any client).
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use platform_core::mqtt::session::Session;
use rumqttc::mqttbytes::v4::Packet;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut session = Session::new();
    while let Ok(p) = Packet::read(&mut buf, 64 * 1024) {
        let _ = session.handle(p);
    }
});
