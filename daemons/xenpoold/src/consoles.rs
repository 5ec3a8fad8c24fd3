//! Console records: a running or paused VM has one `rfb` console located on the host it
//! runs on, and any other VM has none. VM lifecycle calls bring a VM's consoles in step in
//! the same transaction as its new power state; a keeper on the coordinator catches every
//! other change (HA halting the VMs of a failed host, a restart finding its domains gone).

use std::collections::BTreeMap;
use std::sync::Arc;

use xenpool_core::{
    Class, ConsoleProtocol, ConsoleRecord, CoreError, Database, HostRecord, Ref, Txn, VmPowerState,
    VmRecord,
};

use crate::node::Node;

/// The location a console of a VM on the host at `address` has.
fn location(node: &Node, address: &str, console: &Ref) -> String {
    // Hosts of a pool share their ports (see `transport`): this host's HTTPS port is theirs.
    let port = node.config.https_port;
    if port == 443 || port == 0 {
        format!("https://{address}/console?ref={}", console.as_str())
    } else {
        format!("https://{address}:{port}/console?ref={}", console.as_str())
    }
}

/// Whether `vm`'s consoles are out of step with its power state and host.
fn out_of_step(db: &Database, node: &Node, vm: &Ref) -> bool {
    let Ok(v) = db.get::<VmRecord>(vm) else {
        return false;
    };
    let live = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
        && !v.resident_on.is_null()
        && !v.is_control_domain;
    if !live {
        return !v.consoles.is_empty();
    }
    let Some(c) = v.consoles.first() else {
        return true;
    };
    let address = db
        .get::<HostRecord>(&v.resident_on)
        .map(|h| h.address.clone())
        .unwrap_or_default();
    v.consoles.len() != 1
        || db
            .get::<ConsoleRecord>(c)
            .map_or(true, |r| r.location != location(node, &address, c))
}

/// Keeps a VM's consoles in step with its power state: a running or paused VM has one
/// `rfb` console, located on the host it runs on; any other VM has none.
pub fn sync(txn: &mut Txn<'_>, node: &Node, vm: &Ref) -> Result<(), CoreError> {
    let v = txn.get::<VmRecord>(vm)?.clone();
    let live = matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
        && !v.resident_on.is_null()
        && !v.is_control_domain;
    if !live {
        for c in &v.consoles {
            txn.destroy(Class::Console, c)?;
        }
        return Ok(());
    }
    let address = txn.get::<HostRecord>(&v.resident_on)?.address.clone();
    for extra in v.consoles.iter().skip(1) {
        txn.destroy(Class::Console, extra)?;
    }
    match v.consoles.first() {
        Some(c) => {
            let want = location(node, &address, c);
            if txn.get::<ConsoleRecord>(c)?.location != want {
                txn.update::<ConsoleRecord>(c, |r| r.location = want)?;
            }
        }
        None => {
            let c = node.state.new_ref();
            let rec = ConsoleRecord {
                uuid: node.state.new_uuid(),
                protocol: ConsoleProtocol::Rfb,
                location: location(node, &address, &c),
                VM: vm.clone(),
                other_config: BTreeMap::new(),
            };
            txn.create(c, rec)?;
        }
    }
    Ok(())
}

/// Brings the consoles of every VM changed since the last pass in step, whenever the
/// database changes, while this host coordinates (members' copies follow by replication).
pub fn keep(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut changed = node.state.generation.subscribe();
        // From nothing: the first pass looks at every VM.
        let mut seen: Option<u64> = None;
        loop {
            if node.is_coordinator() {
                let (stale, generation) = {
                    let db = node.state.db();
                    let candidates: Vec<Ref> = match seen.map(|s| db.changes_since(s)) {
                        Some(Ok(changes)) => changes
                            .into_iter()
                            .filter(|c| c.class == Class::VM)
                            .map(|c| c.reference)
                            .collect(),
                        // The first pass, or changes no longer kept: every VM.
                        _ => db.refs(Class::VM).cloned().collect(),
                    };
                    let stale: Vec<Ref> = candidates
                        .into_iter()
                        .filter(|vm| out_of_step(&db, &node, vm))
                        .collect();
                    (stale, db.generation())
                };
                let done = stale.is_empty()
                    || node
                        .state
                        .write(|txn| {
                            for vm in &stale {
                                if txn.db().exists(Class::VM, vm) {
                                    sync(txn, &node, vm)?;
                                }
                            }
                            Ok(())
                        })
                        .map_err(
                            |e| tracing::debug!(error = %e, "consoles not brought in step yet"),
                        )
                        .is_ok();
                // What could not be written is looked at again after the next change.
                if done {
                    seen = Some(generation);
                }
            } else {
                seen = None;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits, on database changes only, until `check` holds.
    async fn until(node: &Node, what: &str, check: impl Fn(&Database) -> bool) {
        let mut changed = node.state.generation.subscribe();
        loop {
            if check(&node.state.db()) {
                return;
            }
            let woke = tokio::time::timeout(Duration::from_secs(30), changed.changed()).await;
            assert!(matches!(woke, Ok(Ok(()))), "{what} never happened");
        }
    }

    fn consoles_of(db: &Database, vm: &Ref) -> Vec<ConsoleRecord> {
        db.get::<VmRecord>(vm)
            .map(|v| v.consoles.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| db.get::<ConsoleRecord>(c).ok().cloned())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_keeper_follows_changes_made_behind_the_lifecycle_calls() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().join("h"),
            https_port: 9443,
            ..Default::default()
        };
        let (node, _) =
            crate::open_node_with(config, Arc::new(crate::transport::RpcTransport::new(0)))
                .unwrap();
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        keep(node.clone(), stop_rx);
        let (vm, address) = {
            let db = node.state.db();
            let (vm, _) = db
                .all::<VmRecord>()
                .find(|(_, v)| v.name_label == "demo-vm")
                .unwrap();
            let address = db
                .get::<HostRecord>(&node.state.host)
                .unwrap()
                .address
                .clone();
            (vm.clone(), address)
        };
        // Marked running, as a restart elsewhere would record it: a console appears.
        let host = node.state.host.clone();
        node.state
            .write(|txn| {
                txn.update::<VmRecord>(&vm, |v| {
                    v.power_state = VmPowerState::Running;
                    v.resident_on = host.clone();
                })
            })
            .unwrap();
        until(&node, "a console", |db| consoles_of(db, &vm).len() == 1).await;
        let console = &consoles_of(&node.state.db(), &vm)[0];
        assert_eq!(console.protocol, ConsoleProtocol::Rfb);
        assert!(
            console
                .location
                .starts_with(&format!("https://{address}:9443/console?ref=")),
            "{}",
            console.location
        );
        // Halted behind its back (HA halting the VMs of a failed host): the console goes.
        node.state
            .write(|txn| {
                txn.update::<VmRecord>(&vm, |v| {
                    v.power_state = VmPowerState::Halted;
                    v.resident_on = Ref::null();
                })
            })
            .unwrap();
        until(&node, "no console", |db| {
            consoles_of(db, &vm).is_empty() && db.count(Class::Console) == 0
        })
        .await;
    }
}
