//! Talking to this host's toolstack: health checks and events, never blocking the loop.
//!
//! Calls: `host.xenpool_ha_health(secret)` answered by a string holding a JSON
//! [`HealthReport`], and `host.xenpool_ha_event(secret, json)` with the JSON of an
//! [`HaEvent`]. Events go out in order through one task; a send that keeps failing is
//! dropped with a log line rather than holding up the ones behind it, and a run of
//! `Lease` events waiting behind a slow toolstack collapses to the latest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use xenpool_core::error::chain;
use xenpool_ha::arming::{HaEvent, HealthReport};
use xenpool_rpc::{Client, Value};

use crate::fence::Alive;
use crate::HadError;

/// Attempts per event before it is dropped.
const EVENT_ATTEMPTS: usize = 4;
/// Pause between attempts.
const EVENT_RETRY: Duration = Duration::from_millis(200);

/// The toolstack of this host.
#[derive(Debug, Clone)]
pub struct Toolstack {
    client: Arc<Client>,
    secret: String,
    timeout: Duration,
}

impl Toolstack {
    /// A client of `url`, each call given up after `timeout`.
    pub fn new(url: &str, secret: String, timeout: Duration) -> Result<Toolstack, HadError> {
        let client = Client::builder(url)
            .timeout(timeout)
            .max_redirects(0)
            .originator("xenpool-had")
            .build()
            .map_err(|source| HadError::Client {
                url: url.to_owned(),
                source,
            })?;
        Ok(Toolstack {
            client: Arc::new(client),
            secret,
            timeout,
        })
    }

    /// One health check: the report, or `None` for no (healthy) answer in time.
    pub async fn health(&self) -> Option<HealthReport> {
        let call = self.client.call(
            "host.xenpool_ha_health",
            vec![Value::String(self.secret.clone())],
        );
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %chain(&e), "health check failed");
                return None;
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.timeout, "health check not answered");
                return None;
            }
        };
        let Value::String(json) = answer else {
            tracing::warn!(
                kind = answer.kind(),
                "health check answered with a non-string"
            );
            return None;
        };
        match serde_json::from_str(&json) {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::warn!(error = %e, "health check answered with an unreadable report");
                None
            }
        }
    }

    async fn event(&self, event: &HaEvent) -> Result<(), String> {
        let json = serde_json::to_string(event).map_err(|e| e.to_string())?;
        let call = self.client.call(
            "host.xenpool_ha_event",
            vec![Value::String(self.secret.clone()), Value::String(json)],
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(chain(&e)),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Starts the event sender; events given to the returned channel reach the toolstack
    /// in order.
    /// Nothing is sent once `alive` says the daemon may no longer act.
    pub fn events(&self, alive: Alive) -> UnboundedSender<HaEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_events(self.clone(), alive, rx));
        tx
    }
}

async fn send_events(toolstack: Toolstack, alive: Alive, mut rx: UnboundedReceiver<HaEvent>) {
    let mut queue: VecDeque<HaEvent> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(e) => queue.push_back(e),
                None => return,
            }
        }
        while let Ok(e) = rx.try_recv() {
            queue.push_back(e);
        }
        // A lease is superseded by the next one: only the latest matters to the toolstack.
        while matches!(
            (queue.front(), queue.get(1)),
            (Some(HaEvent::Lease { .. }), Some(HaEvent::Lease { .. }))
        ) {
            queue.pop_front();
        }
        let Some(event) = queue.pop_front() else {
            continue;
        };
        let mut attempt = 1;
        loop {
            if !alive.check() {
                // Past the deadline (a freeze): the fence is coming, and it alone speaks.
                return;
            }
            match toolstack.event(&event).await {
                Ok(()) => break,
                Err(e) if attempt >= EVENT_ATTEMPTS => {
                    tracing::warn!(?event, error = %e, "event dropped: the toolstack did not take it");
                    break;
                }
                Err(e) => {
                    tracing::debug!(?event, error = %e, attempt, "event not taken, retrying");
                    attempt += 1;
                    tokio::time::sleep(EVENT_RETRY).await;
                }
            }
        }
    }
}
