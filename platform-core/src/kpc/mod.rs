//! KPC, the Kaa Protocol Communication service: listeners, connections and request routing.

pub mod connection;
pub mod context;
pub mod framing;
pub mod guard;
mod handshake;
pub mod http;
pub mod https;

pub mod listener;
pub mod quickack;
pub mod router;
pub mod stats;
pub mod tls;
pub mod token_cache;
pub mod turns;
pub mod ws;

pub use router::{Dispatcher, Reply};
