//! Delivering what waited: when a session first uses an endpoint's token, it gets that
//! endpoint's configurations it has not applied and its pending commands, pushed — the
//! way KaaIoT's clients expect, since none of them asks on connect (docs/protocol.md §2).
//!
//! Invariants: a configuration is pushed only when the endpoint's last `/applied` report
//! names another `configId`; a command is pushed while it is unexpired and has no result,
//! and is marked DELIVERED only when a session actually got it; nothing goes to a session
//! that said `"observe": false` for that endpoint and extension; what the triggering
//! request itself fetches (its `command/<type>` or `config/json[/<name>]`) is left to its
//! own answer, so nothing arrives twice.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use super::{cex, cmx, storage, ExtensionKind, Extensions};
use crate::kp1::{Kp1Error, Kp1TopicRef};
use crate::sessions::SessionId;
use crate::store::now_ms;

/// What the store says waits for one endpoint.
struct Waiting {
    /// (instance, name, configId, body) not yet applied.
    configs: Vec<(String, String, String, Value)>,
    /// (instance, type) → [(id, payload)] pending.
    commands: BTreeMap<(String, String), Vec<(i64, Value)>>,
}

impl Extensions {
    /// Hands `session` what waited for `endpoint_id`, which it just used for the first time
    /// through `request` (the topic of that first request).
    pub async fn catch_up(
        &self,
        session: SessionId,
        endpoint_id: &str,
        request: &Kp1TopicRef<'_>,
    ) -> Result<(), Kp1Error> {
        let mut cmx_instances = Vec::new();
        let mut cex_instances = Vec::new();
        for (name, kind) in self.instances.iter() {
            match kind {
                ExtensionKind::Cmx => cmx_instances.push(name.clone()),
                ExtensionKind::Cex => cex_instances.push(name.clone()),
                _ => {}
            }
        }
        let ep = endpoint_id.to_owned();
        let waiting = self
            .store
            .call(move |c| {
                let mut configs = Vec::new();
                for inst in &cmx_instances {
                    for name in cmx::names(c, &ep, inst)? {
                        let Some((id, body, _)) = cmx::effective(c, &ep, inst, &name)? else {
                            continue;
                        };
                        let applied = cmx::applied(c, &ep, inst, &name)?;
                        if applied.is_none_or(|a| a.config_id != id) {
                            configs.push((inst.clone(), name, id, body));
                        }
                    }
                }
                let mut commands = BTreeMap::new();
                for inst in &cex_instances {
                    for (ty, id, payload) in cex::pending(c, &ep, inst, now_ms())? {
                        commands
                            .entry((inst.clone(), ty))
                            .or_insert_with(Vec::new)
                            .push((id, payload));
                    }
                }
                Ok(Waiting { configs, commands })
            })
            .await
            .map_err(storage)?;
        let (avn, token) = (request.app_version, request.token);
        let fetched_here = |instance: &str, resource: &str| {
            request.extension == instance && request.resource == resource
        };
        for (inst, name, id, body) in waiting.configs {
            let resource = if name.is_empty() {
                "config/json".to_owned()
            } else {
                format!("config/json/{name}")
            };
            if fetched_here(&inst, &resource) {
                continue;
            }
            let topic = format!("kp1/{avn}/{inst}/{token}/{resource}/status");
            let body = serde_json::json!({"configId": id, "config": body}).to_string();
            if self
                .hub
                .send_to(session, endpoint_id, &inst, topic, Bytes::from(body))
            {
                log::debug!("{inst}: configuration {id} for {endpoint_id} pushed on first use");
            }
        }
        let mut delivered = Vec::new();
        for ((inst, ty), cmds) in waiting.commands {
            if fetched_here(&inst, &format!("command/{ty}")) {
                continue;
            }
            let topic = format!("kp1/{avn}/{inst}/{token}/command/{ty}/status");
            let payload = Bytes::from(cex::commands_payload(&cmds));
            if self
                .hub
                .send_to(session, endpoint_id, &inst, topic, payload)
            {
                log::debug!(
                    "{inst}: {} pending {ty} command(s) for {endpoint_id} pushed on first use",
                    cmds.len()
                );
                delivered.extend(cmds.iter().map(|(id, _)| *id));
            }
        }
        if !delivered.is_empty() {
            self.store
                .call(move |c| cex::mark_delivered(c, &delivered, now_ms()))
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Sets an app version's default configuration and pushes it to the live sessions of
    /// every endpoint that follows it (has no configuration of its own). Returns the
    /// configuration ID and whether it changed.
    pub async fn put_default_config(
        &self,
        app_version: &str,
        instance: &str,
        name: &str,
        body: Value,
    ) -> Result<(String, bool), crate::store::StoreError> {
        let (avn, inst, n, b) = (
            app_version.to_owned(),
            instance.to_owned(),
            name.to_owned(),
            body.clone(),
        );
        let (config_id, changed, followers) = self
            .store
            .call(move |c| {
                let (id, changed) = cmx::put_default(c, &avn, &inst, &n, &b, now_ms())?;
                let mut followers = Vec::new();
                if changed {
                    for ep in cmx::followers(c, &avn, &inst, &n)? {
                        let tokens = crate::epr::push_tokens(c, &ep)?;
                        followers.push((ep, tokens));
                    }
                }
                Ok((id, changed, followers))
            })
            .await?;
        let suffix = if name.is_empty() {
            String::new()
        } else {
            format!("/{name}")
        };
        let payload = serde_json::json!({"configId": config_id, "config": body})
            .to_string()
            .into_bytes();
        for (ep, tokens) in followers {
            self.push(
                &ep,
                instance,
                &tokens,
                &format!("{instance}: default configuration {config_id} of {app_version}"),
                |avn, token| format!("kp1/{avn}/{instance}/{token}/config/json{suffix}/status"),
                payload.clone(),
            );
        }
        Ok((config_id, changed))
    }
}
