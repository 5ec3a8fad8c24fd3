//! Live migration between hosts of the pool: the hypervisor work of xenpool-xen's
//! `migrate_domain`, carried between the two hosts over the pool's internal calls.
//!
//! The coordinator checks and records the migration (xenpool-core's `migration`), then
//! asks the source host to send (`host.xenpool_migrate_send`). The source runs the pre-copy
//! rounds on a blocking thread; each call its target makes becomes a
//! `host.xenpool_migrate_receive` on the destination, which keeps one receiver per
//! migration. Progress goes back to the coordinator's task
//! (`pool.xenpool_migration_progress`), whose answer says whether the task was cancelled.
//! The rule that the VM never runs on two hosts is xenpool-xen's: the source is paused
//! before the destination is told to resume, and resumes only if the destination is sure
//! not to run its copy.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_xen::migrate::{
    migrate_domain, Aftermath, MigrationEvent, MigrationReceiver, MigrationTarget, PrecopyPolicy,
};
use xenpool_xen::{DomainSpec, XenError};

use crate::node::Node;

/// How long one call between the hosts of a migration may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Progress reports to the coordinator at most this often (each is a database write).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The migrations this host receives, by migration id.
#[derive(Debug, Default)]
pub struct Incoming {
    receivers: Mutex<HashMap<String, MigrationReceiver>>,
}

impl Incoming {
    fn take(&self, id: &str) -> Option<MigrationReceiver> {
        self.receivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    fn put(&self, id: &str, receiver: MigrationReceiver) {
        self.receivers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), receiver);
    }
}

/// What the source reports when a migration ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    /// The domain id on the destination, when it moved.
    pub moved_to_domid: Option<i64>,
    /// Where the VM is after a failure.
    pub aftermath: Option<Aftermath>,
    /// Why it failed.
    pub error: String,
    /// Figures: rounds, bytes sent, bytes sent while paused.
    pub rounds: u32,
    /// Stream bytes sent.
    pub bytes_sent: u64,
    /// Stream bytes sent while the guest was paused.
    pub paused_bytes: u64,
}

fn aftermath_name(a: Aftermath) -> &'static str {
    match a {
        Aftermath::SourceRestored => "source_restored",
        Aftermath::SourcePaused => "source_paused",
        Aftermath::Unknown => "unknown",
    }
}

fn aftermath_of(name: &str) -> Option<Aftermath> {
    match name {
        "source_restored" => Some(Aftermath::SourceRestored),
        "source_paused" => Some(Aftermath::SourcePaused),
        "unknown" => Some(Aftermath::Unknown),
        _ => None,
    }
}

impl SendOutcome {
    /// As the internal call answers it.
    pub fn to_wire(&self) -> Wire {
        Wire::Struct(vec![
            (
                "domid".into(),
                Wire::String(self.moved_to_domid.map_or(String::new(), |d| d.to_string())),
            ),
            (
                "aftermath".into(),
                Wire::String(self.aftermath.map_or("", aftermath_name).to_string()),
            ),
            ("error".into(), Wire::String(self.error.clone())),
            ("rounds".into(), Wire::String(self.rounds.to_string())),
            (
                "bytes_sent".into(),
                Wire::String(self.bytes_sent.to_string()),
            ),
            (
                "paused_bytes".into(),
                Wire::String(self.paused_bytes.to_string()),
            ),
        ])
    }

    /// From the internal call's answer.
    pub fn from_wire(v: &Wire) -> Result<SendOutcome, XenApiError> {
        let Wire::Struct(fields) = v else {
            return Err(XenApiError::internal_error("bad migration answer"));
        };
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| match v {
                    Wire::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .unwrap_or("")
        };
        Ok(SendOutcome {
            moved_to_domid: get("domid").parse().ok(),
            aftermath: aftermath_of(get("aftermath")),
            error: get("error").to_string(),
            rounds: get("rounds").parse().unwrap_or(0),
            bytes_sent: get("bytes_sent").parse().unwrap_or(0),
            paused_bytes: get("paused_bytes").parse().unwrap_or(0),
        })
    }
}

/// The destination as the sending thread sees it: each call a blocking internal call.
struct RemoteTarget {
    node: Arc<Node>,
    runtime: tokio::runtime::Handle,
    address: String,
    secret: String,
    id: String,
    domid: Option<i64>,
    sent: u64,
}

impl RemoteTarget {
    fn call(&self, op: &str, payload: String) -> Result<Wire, XenError> {
        let params = vec![
            Wire::String(self.secret.clone()),
            Wire::String(self.id.clone()),
            Wire::String(op.to_string()),
            Wire::String(payload),
        ];
        self.runtime
            .block_on(self.node.transport.call(
                &self.address,
                "host.xenpool_migrate_receive",
                params,
                CALL_TIMEOUT,
            ))
            .map_err(|e| XenError::MigrationStream {
                offset: self.sent,
                reason: format!(
                    "the destination answered {op} with {}",
                    e.description().join(" ")
                ),
            })
    }
}

impl MigrationTarget for RemoteTarget {
    fn prepare(&mut self, spec: &DomainSpec) -> Result<(), XenError> {
        let spec = serde_json::json!({
            "uuid": spec.uuid, "name": spec.name, "memory": spec.memory, "vcpus": spec.vcpus,
        });
        self.call("prepare", spec.to_string()).map(|_| ())
    }

    fn send(&mut self, chunk: &[u8]) -> Result<(), XenError> {
        let text = base64::engine::general_purpose::STANDARD.encode(chunk);
        self.call("send", text)?;
        self.sent += chunk.len() as u64;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), XenError> {
        let v = self.call("resume", String::new())?;
        if let Wire::String(s) = v {
            self.domid = s.parse().ok();
        }
        Ok(())
    }

    fn abort(&mut self) -> Result<(), XenError> {
        self.call("abort", String::new()).map(|_| ())
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> XenApiError {
    XenApiError::new("INVALID_VALUE", [what.to_string(), e.to_string()])
}

/// Serves `host.xenpool_migrate_receive` on the destination.
pub async fn receive(
    node: &Arc<Node>,
    id: &str,
    op: &str,
    payload: &str,
) -> Result<Wire, XenApiError> {
    let hv = node.hypervisor.clone();
    let incoming = node.clone();
    let id = id.to_string();
    let op = op.to_string();
    let payload = payload.to_string();
    tokio::task::spawn_blocking(move || -> Result<Wire, XenApiError> {
        let fail = |e: XenError| XenApiError::internal_error(e.to_string());
        let incoming = &incoming.migrations;
        match op.as_str() {
            "prepare" => {
                let v: serde_json::Value =
                    serde_json::from_str(&payload).map_err(|e| invalid("spec", e))?;
                let spec = DomainSpec {
                    uuid: v["uuid"].as_str().unwrap_or_default().to_string(),
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    memory: v["memory"].as_u64().unwrap_or(0),
                    vcpus: u32::try_from(v["vcpus"].as_u64().unwrap_or(1)).unwrap_or(1),
                };
                if spec.uuid.is_empty() {
                    return Err(invalid("spec", "no uuid"));
                }
                // A receiver left by an earlier attempt with this id is dropped first.
                if let Some(mut old) = incoming.take(&id) {
                    let _ = old.abort(&*hv);
                }
                let r = MigrationReceiver::prepare(&*hv, &spec).map_err(fail)?;
                incoming.put(&id, r);
                Ok(Wire::String(String::new()))
            }
            "send" => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload.as_bytes())
                    .map_err(|e| invalid("chunk", e))?;
                let mut r = incoming
                    .take(&id)
                    .ok_or_else(|| invalid("migration", "not prepared"))?;
                let fed = r.feed(&*hv, &bytes);
                incoming.put(&id, r);
                fed.map_err(fail)?;
                Ok(Wire::String(String::new()))
            }
            "resume" => {
                let mut r = incoming
                    .take(&id)
                    .ok_or_else(|| invalid("migration", "not prepared"))?;
                match r.finish(&*hv) {
                    Ok(domid) => Ok(Wire::String(domid.0.to_string())),
                    Err(e) => {
                        // Kept, so the sender's abort finds it and removes the domain.
                        incoming.put(&id, r);
                        Err(fail(e))
                    }
                }
            }
            "abort" => {
                if let Some(mut r) = incoming.take(&id) {
                    if let Err(e) = r.abort(&*hv) {
                        incoming.put(&id, r);
                        return Err(fail(e));
                    }
                }
                Ok(Wire::String(String::new()))
            }
            other => Err(invalid("op", other)),
        }
    })
    .await
    .map_err(|e| XenApiError::internal_error(e.to_string()))?
}

/// Serves `host.xenpool_migrate_send` on the source: moves the domain of VM `vm_uuid` to
/// the host at `destination`, reporting progress for `task` to the coordinator.
pub async fn send(
    node: &Arc<Node>,
    vm_uuid: &str,
    destination: &str,
    id: &str,
    task: &str,
    coordinator: &str,
) -> Result<Wire, XenApiError> {
    let secret = crate::pool::secret_or_error(node)?;
    let domid = node
        .hypervisor
        .domain_by_uuid(vm_uuid)
        .map_err(|e| XenApiError::internal_error(e.to_string()))?
        .map(|d| d.domid)
        .ok_or_else(|| {
            XenApiError::internal_error(format!("VM {vm_uuid} has no domain on this host"))
        })?;
    let mut target = RemoteTarget {
        node: node.clone(),
        runtime: tokio::runtime::Handle::current(),
        address: destination.to_string(),
        secret: secret.clone(),
        id: id.to_string(),
        domid: None,
        sent: 0,
    };
    let node2 = node.clone();
    let task = task.to_string();
    let coordinator = coordinator.to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        let runtime = target.runtime.clone();
        let mut last = Instant::now();
        let mut observer = |event: &MigrationEvent| {
            let MigrationEvent::Progress(p) = event else {
                return ControlFlow::Continue(());
            };
            if task.is_empty() || last.elapsed() < PROGRESS_EVERY {
                return ControlFlow::Continue(());
            }
            last = Instant::now();
            let answer = runtime.block_on(node2.transport.call(
                &coordinator,
                "pool.xenpool_migration_progress",
                vec![
                    Wire::String(secret.clone()),
                    Wire::String(task.clone()),
                    Wire::Double(p.fraction),
                ],
                CALL_TIMEOUT,
            ));
            match answer {
                Ok(Wire::Bool(true)) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        };
        let hv = node2.hypervisor.clone();
        let result = migrate_domain(
            &*hv,
            domid,
            &mut target,
            &PrecopyPolicy::default(),
            &mut observer,
        );
        match result {
            Ok(report) => {
                if let Some(left) = &report.source_left_over {
                    tracing::warn!(vm = %target.id, left = %left, "the source domain could not be removed after the move");
                }
                SendOutcome {
                    moved_to_domid: Some(target.domid.unwrap_or(-1)),
                    aftermath: None,
                    error: String::new(),
                    rounds: report.rounds,
                    bytes_sent: report.bytes_sent,
                    paused_bytes: report.paused_bytes,
                }
            }
            Err(e) => {
                let aftermath = match &e {
                    XenError::MigrationFailed { aftermath, .. } => *aftermath,
                    // Nothing was started: the domain is where it was.
                    _ => Aftermath::SourceRestored,
                };
                SendOutcome {
                    moved_to_domid: None,
                    aftermath: Some(aftermath),
                    error: e.to_string(),
                    rounds: 0,
                    bytes_sent: 0,
                    paused_bytes: 0,
                }
            }
        }
    })
    .await
    .map_err(|e| XenApiError::internal_error(e.to_string()))?;
    Ok(outcome.to_wire())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_on_the_wire() {
        for o in [
            SendOutcome {
                moved_to_domid: Some(7),
                aftermath: None,
                error: String::new(),
                rounds: 3,
                bytes_sent: 1 << 20,
                paused_bytes: 4096,
            },
            SendOutcome {
                moved_to_domid: None,
                aftermath: Some(Aftermath::Unknown),
                error: "boom".into(),
                rounds: 0,
                bytes_sent: 0,
                paused_bytes: 0,
            },
        ] {
            assert_eq!(SendOutcome::from_wire(&o.to_wire()).ok(), Some(o));
        }
        assert!(SendOutcome::from_wire(&Wire::String("x".into())).is_err());
    }
}
