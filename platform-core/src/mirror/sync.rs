//! The registry copy over NATS (I/O actor). The owner answers
//! `kaa.v1.replica.<owner>.kpgw.registry` with its whole registry and says on
//! `kaa.v1.service.<kpc>.kpgw.registry-changed` when a REST call changed it; a mirror
//! copies it at start, at every such notice, every 30 s, and right after a REST change
//! it passed on to the owner (so what one caller made, the next call sees).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{export, import, Changes, Registry, Snapshot};
use crate::bus::nats::{next_or_stop, NatsBus, NatsSettings};
use crate::bus::subjects;
use crate::sessions::{Hub, Identity};
use crate::store::StoreHandle;

/// How long the owner has to send its registry.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start waits for the first copy.
const FIRST_COPY: Duration = Duration::from_secs(3);
/// A copy at least this often, notices or not (one may have been missed).
const EVERY: Duration = Duration::from_secs(30);

/// A mirror of the owner's registry.
#[derive(Debug)]
pub struct Mirror {
    nats: Arc<NatsBus>,
    store: StoreHandle,
    hub: Hub,
    owner: String,
    /// One copy at a time.
    busy: tokio::sync::Mutex<()>,
    failures: AtomicU64,
    /// Copies that changed something.
    pub updates: AtomicU64,
}

impl Mirror {
    pub fn new(nats: Arc<NatsBus>, store: StoreHandle, hub: Hub, owner: String) -> Arc<Self> {
        Arc::new(Self {
            nats,
            store,
            hub,
            owner,
            busy: tokio::sync::Mutex::new(()),
            failures: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        })
    }

    /// The replica that owns the registry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Copies the owner's registry into this store now, and ends the sessions that used
    /// what is gone or changed.
    pub async fn sync_now(&self) -> Result<Changes, String> {
        let _one = self.busy.lock().await;
        let bytes = self
            .nats
            .request_raw(subjects::registry(&self.owner), Vec::new(), FETCH_TIMEOUT)
            .await?;
        let snapshot: Snapshot =
            serde_json::from_slice(&bytes).map_err(|e| format!("malformed registry: {e}"))?;
        let changes = self
            .store
            .call(move |c| import(c, &snapshot))
            .await
            .map_err(|e| e.to_string())?;
        for t in &changes.tokens {
            self.hub.cut_token(t);
        }
        for u in &changes.basic {
            self.hub.cut_identity(&Identity::Basic(u.clone()));
        }
        for f in &changes.x509 {
            self.hub.cut_identity(&Identity::X509(f.clone()));
        }
        for e in &changes.endpoints {
            self.hub.cut_endpoint(e);
        }
        if !changes.endpoints.is_empty() {
            crate::tsdb::purge_deleted(&self.store)
                .await
                .map_err(|e| e.to_string())?;
        }
        if changes.rows > 0 {
            self.updates.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "mirror: registry of {} copied ({} row(s) changed)",
                self.owner,
                changes.rows
            );
        }
        Ok(changes)
    }

    /// Keeps the copy current until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let kpc = self.nats.names().kpc.clone();
        let mut notices = match self
            .nats
            .subscribe_to(subjects::registry_changed(&kpc))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                log::error!("mirror: change notices not taken ({e}); copying every 30 s only");
                return self.run_without_notices(shutdown).await;
            }
        };
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                n = notices.next() => if n.is_none() { break },
            }
            self.attempt().await;
        }
    }

    async fn run_without_notices(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.attempt().await,
            }
        }
    }

    async fn attempt(&self) {
        match self.sync_now().await {
            Ok(_) => {
                if self.failures.swap(0, Ordering::Relaxed) > 0 {
                    log::info!("mirror: registry of {} reachable again", self.owner);
                }
            }
            Err(e) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!(
                        "mirror: registry of {} not copied ({n} time(s) in a row): {e}",
                        self.owner
                    );
                }
            }
        }
    }
}

/// Takes this replica's part in the registry as `[core.nats] registry_owner` says: the
/// owner answers for its registry; a mirror makes a first copy (a few seconds at most,
/// else in the background) and keeps it current.
pub async fn start(
    nats: &Arc<NatsBus>,
    settings: &NatsSettings,
    store: &StoreHandle,
    hub: &Hub,
    shutdown: &CancellationToken,
) -> Registry {
    match &settings.registry_owner {
        None => Registry::Own,
        Some(owner) if *owner == settings.names.replica_id => {
            tokio::spawn(serve_owner(nats.clone(), store.clone(), shutdown.clone()));
            log::info!("mirror: this replica owns the registry");
            Registry::Owner
        }
        Some(owner) => {
            let m = Mirror::new(nats.clone(), store.clone(), hub.clone(), owner.clone());
            match tokio::time::timeout(FIRST_COPY, m.sync_now()).await {
                Ok(Ok(_)) => log::info!("mirror: registry copied from {owner}"),
                Ok(Err(e)) => log::warn!("mirror: no first copy from {owner} ({e}); retrying"),
                Err(_) => log::warn!("mirror: no first copy from {owner} yet; retrying"),
            }
            tokio::spawn(m.clone().run(shutdown.clone()));
            Registry::Mirror(m)
        }
    }
}

/// The owner: answers for its registry until `shutdown`.
pub async fn serve_owner(nats: Arc<NatsBus>, store: StoreHandle, shutdown: CancellationToken) {
    let own = subjects::registry(&nats.names().replica_id);
    let mut asks = match nats.subscribe_to(own).await {
        Ok(s) => s,
        Err(e) => {
            log::error!("mirror: registry requests not taken: {e}");
            return;
        }
    };
    loop {
        let Some(msg) = next_or_stop(&mut asks, &shutdown).await else {
            break;
        };
        let Some(reply) = msg.reply else {
            continue;
        };
        match store.call(|c| export(c)).await {
            Ok(snapshot) => match serde_json::to_vec(&snapshot) {
                Ok(body) => nats.publish_raw(reply.to_string(), body).await,
                Err(e) => log::error!("mirror: registry not encoded: {e}"),
            },
            Err(e) => log::error!("mirror: registry not read: {e}"),
        }
    }
}

/// The owner: tells the mirrors its registry changed.
pub async fn announce(nats: &NatsBus) {
    nats.publish_raw(subjects::registry_changed(&nats.names().kpc), Vec::new())
        .await;
}
