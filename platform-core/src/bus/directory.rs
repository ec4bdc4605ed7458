//! Which other core replicas hold a live session of which endpoint (pure), learnt from
//! the connectivity events they publish on NATS.
//!
//! A replica announces `connected` for an endpoint when it starts holding it and
//! `disconnected` only when no replica holds it any more, so a `connected` from R adds R
//! as a holder and a `disconnected` from anyone ends every holding of those endpoints
//! (a holder that disagrees announces itself again). Replicas found gone leave their
//! endpoints as orphans, for a survivor to disconnect.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Directory {
    /// replica → endpoint id → app version
    held: HashMap<String, BTreeMap<String, String>>,
    /// Endpoints of replicas found gone that nobody else held (id, app version).
    orphans: Vec<(String, String)>,
}

impl Directory {
    /// Replica `replica` announced these endpoints connected.
    pub fn connected(&mut self, replica: &str, endpoints: &[(String, String)]) {
        let held = self.held.entry(replica.to_owned()).or_default();
        for (id, avn) in endpoints {
            held.insert(id.clone(), avn.clone());
        }
        self.orphans
            .retain(|(id, _)| !endpoints.iter().any(|(e, _)| e == id));
    }

    /// Someone announced these endpoints disconnected: no replica holds them now.
    pub fn disconnected(&mut self, endpoints: &[(String, String)]) {
        for held in self.held.values_mut() {
            for (id, _) in endpoints {
                held.remove(id);
            }
        }
        self.held.retain(|_, h| !h.is_empty());
        self.orphans
            .retain(|(id, _)| !endpoints.iter().any(|(e, _)| e == id));
    }

    /// This replica announced these endpoints connected: they are no orphans.
    pub fn held_here(&mut self, endpoints: &[(String, String)]) {
        self.orphans
            .retain(|(id, _)| !endpoints.iter().any(|(e, _)| e == id));
    }

    /// The other replicas said to hold any of `endpoints`, each with the ones it holds.
    pub fn holders(&self, endpoints: &[String]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .held
            .iter()
            .filter_map(|(replica, held)| {
                let mine: Vec<String> = endpoints
                    .iter()
                    .filter(|e| held.contains_key(*e))
                    .cloned()
                    .collect();
                (!mine.is_empty()).then(|| (replica.clone(), mine))
            })
            .collect();
        out.sort();
        out
    }

    /// The replicas known to hold something.
    pub fn replicas(&self) -> Vec<String> {
        let mut r: Vec<String> = self.held.keys().cloned().collect();
        r.sort();
        r
    }

    /// `replica` answered which of `asked` it still holds: forget the others.
    pub fn confirm(&mut self, replica: &str, asked: &[String], still: &HashSet<String>) {
        if let Some(held) = self.held.get_mut(replica) {
            for e in asked.iter().filter(|e| !still.contains(*e)) {
                held.remove(e);
            }
            if held.is_empty() {
                self.held.remove(replica);
            }
        }
    }

    /// `replica` is gone (no responders): its endpoints that no other replica holds
    /// become orphans.
    pub fn gone(&mut self, replica: &str) {
        let Some(held) = self.held.remove(replica) else {
            return;
        };
        for (id, avn) in held {
            let elsewhere = self.held.values().any(|h| h.contains_key(&id));
            if !elsewhere && !self.orphans.iter().any(|(o, _)| *o == id) {
                self.orphans.push((id, avn));
            }
        }
    }

    /// Takes the orphans found so far.
    pub fn take_orphans(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(ids: &[&str]) -> Vec<(String, String)> {
        ids.iter()
            .map(|i| (i.to_string(), "v".to_string()))
            .collect()
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn holders_come_from_connected_events_and_leave_with_a_disconnected() {
        let mut d = Directory::default();
        d.connected("b", &eps(&["e1", "e2"]));
        d.connected("c", &eps(&["e2"]));
        assert_eq!(
            d.holders(&ids(&["e2", "e9"])),
            vec![("b".into(), ids(&["e2"])), ("c".into(), ids(&["e2"]))]
        );
        d.disconnected(&eps(&["e2"]));
        assert_eq!(d.holders(&ids(&["e2"])), vec![]);
        assert_eq!(d.replicas(), vec!["b".to_string()], "c holds nothing now");
    }

    #[test]
    fn a_replica_confirms_what_it_still_holds() {
        let mut d = Directory::default();
        d.connected("b", &eps(&["e1", "e2"]));
        d.confirm("b", &ids(&["e1", "e2"]), &HashSet::from(["e2".to_string()]));
        assert_eq!(
            d.holders(&ids(&["e1", "e2"])),
            vec![("b".into(), ids(&["e2"]))]
        );
    }

    #[test]
    fn a_gone_replica_leaves_orphans_only_where_nobody_else_holds() {
        let mut d = Directory::default();
        d.connected("b", &eps(&["e1", "e2"]));
        d.connected("c", &eps(&["e2"]));
        d.gone("b");
        assert_eq!(d.take_orphans(), eps(&["e1"]));
        assert!(d.take_orphans().is_empty());
        d.gone("c");
        d.connected("d", &eps(&["e2"]));
        assert!(d.take_orphans().is_empty(), "e2 is held again");
        d.connected("b", &eps(&["e3", "e4"]));
        d.gone("b");
        d.held_here(&eps(&["e3"]));
        d.disconnected(&eps(&["e4"]));
        assert!(
            d.take_orphans().is_empty(),
            "held here, or announced already"
        );
    }
}
