//! Unit tests of the MQTT connection task: what an idle connection costs.

/// The size of the future a function returns, without calling it.
fn future_size<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// An idle connection is mostly its task, and the task is the size of this future:
/// rare paths (the handshake, a request, a push) are boxed out of it. 1 808 bytes in
/// a debug build when this was written; the bound leaves room for compiler changes
/// but catches a large state moved back in.
#[test]
fn an_idle_connection_task_stays_small() {
    let size = future_size(super::serve::<tokio::net::TcpStream>);
    assert!(size <= 2048, "connection future is {size} bytes");
}
