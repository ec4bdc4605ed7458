//! Server side of MQTT 3.1.1: topic filters and the per-connection session state machine.
//!
//! Packets are encoded and decoded by the well-kept `rumqttc::mqttbytes::v4` codec; this
//! module only decides what to do with them and holds no I/O (the actor is `kpc::connection`).

pub mod connect;
pub mod filter;
pub mod session;

pub use rumqttc::mqttbytes::v4::Packet;
pub use rumqttc::mqttbytes::QoS;
