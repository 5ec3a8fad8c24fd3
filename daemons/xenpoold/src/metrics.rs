//! The daemon's own figures (calls served, call latency, replication) and the Prometheus
//! text exposition of them and of the host's and its VMs' data sources at `GET /metrics`.
//! Every host serves its own.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xenpool_core::{HostRecord, VmPowerState, VmRecord};

use crate::data_sources::{DataSource, Snapshot};
use crate::node::{Node, Role};

/// Upper bounds of the call latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counters of one host's daemon. Updating them is a few atomic adds per call.
#[derive(Debug)]
pub struct Metrics {
    calls: AtomicU64,
    failed_calls: AtomicU64,
    /// Calls per bucket of [`BUCKETS`] (not cumulative), the last for slower calls.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    /// The coordinator's generation as its last replication answer gave it (members).
    coordinator_generation: AtomicU64,
    last_replication: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            calls: AtomicU64::new(0),
            failed_calls: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
            coordinator_generation: AtomicU64::new(0),
            last_replication: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// Counts one call; one that took `elapsed` of service time also counts in the
    /// latency histogram (calls that wait for changes by design give `None`).
    pub fn call_done(&self, elapsed: Option<Duration>, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed_calls.fetch_add(1, Ordering::Relaxed);
        }
        let Some(elapsed) = elapsed else {
            return;
        };
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A member heard from its coordinator, which was at `generation`.
    pub fn replicated(&self, generation: u64) {
        self.coordinator_generation
            .store(generation, Ordering::Relaxed);
        *self
            .last_replication
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// Escapes a label value of the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sources(out: &mut String, metric: &str, key: &str, uuid: &str, list: &[DataSource]) {
    for ds in list {
        let _ = writeln!(
            out,
            "{metric}{{{key}=\"{}\",name=\"{}\",units=\"{}\"}} {}",
            label(uuid),
            label(&ds.name),
            label(&ds.units),
            number(ds.value)
        );
    }
}

/// The whole exposition of this host, in the Prometheus text format (version 0.0.4).
pub async fn render(node: &Node) -> Result<String, xenpool_rpc::XenApiError> {
    let snapshot = Snapshot::read(node.hypervisor.clone()).await?;
    let m = &node.metrics;
    let mut out = String::with_capacity(4096);
    let (host_uuid, host_ds, vm_ds, generation, pending, lags) = {
        let db = node.state.db();
        let host = &node.state.host;
        let host_uuid = db
            .get::<HostRecord>(host)
            .map(|h| h.uuid.clone())
            .unwrap_or_default();
        let host_ds = snapshot.host_sources(&db, host);
        let vm_ds: Vec<(String, Vec<DataSource>)> = db
            .all::<VmRecord>()
            .filter(|(_, v)| {
                v.resident_on == *host
                    && !v.is_control_domain
                    && matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
            })
            .map(|(_, v)| (v.uuid.clone(), snapshot.vm_sources(&db, v)))
            .collect();
        let generation = db.generation();
        let pending = node
            .state
            .cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        // How many writes each host's copy is behind the coordinator's: measured by the
        // coordinator for every member from their polls, by a member for itself.
        let lags: Vec<(String, u64)> = match node.role() {
            Role::Coordinator => db
                .all::<HostRecord>()
                .filter(|(r, _)| *r != host)
                .filter_map(|(r, h)| {
                    node.liveness
                        .generation_of(r)
                        .map(|g| (h.uuid.clone(), generation.saturating_sub(g)))
                })
                .collect(),
            Role::Member { .. } => vec![(
                host_uuid.clone(),
                m.coordinator_generation
                    .load(Ordering::Relaxed)
                    .saturating_sub(generation),
            )],
        };
        (host_uuid, host_ds, vm_ds, generation, pending, lags)
    };

    header(
        &mut out,
        "xenpool_host_data_source",
        "gauge",
        "Current value of each data source of this host (host.get_data_sources).",
    );
    sources(
        &mut out,
        "xenpool_host_data_source",
        "host",
        &host_uuid,
        &host_ds,
    );
    header(
        &mut out,
        "xenpool_vm_data_source",
        "gauge",
        "Current value of each data source of the VMs running on this host (VM.get_data_sources).",
    );
    for (uuid, list) in &vm_ds {
        sources(&mut out, "xenpool_vm_data_source", "vm", uuid, list);
    }

    header(
        &mut out,
        "xenpool_calls_total",
        "counter",
        "XenAPI calls served by this host.",
    );
    let _ = writeln!(
        out,
        "xenpool_calls_total {}",
        m.calls.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "xenpool_failed_calls_total",
        "counter",
        "XenAPI calls this host answered with an error.",
    );
    let _ = writeln!(
        out,
        "xenpool_failed_calls_total {}",
        m.failed_calls.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "xenpool_call_duration_seconds",
        "histogram",
        "Time from a decoded call to its result (long-polls and replication polls excluded).",
    );
    let mut cumulative = 0u64;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += m.latency[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "xenpool_call_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += m.latency[BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "xenpool_call_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "xenpool_call_duration_seconds_sum {}",
        number(m.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    );
    let _ = writeln!(out, "xenpool_call_duration_seconds_count {cumulative}");

    header(
        &mut out,
        "xenpool_pending_tasks",
        "gauge",
        "Asynchronous calls (tasks) running on this host.",
    );
    let _ = writeln!(out, "xenpool_pending_tasks {pending}");
    header(
        &mut out,
        "xenpool_database_generation",
        "gauge",
        "Generation of this host's copy of the pool database.",
    );
    let _ = writeln!(out, "xenpool_database_generation {generation}");
    header(
        &mut out,
        "xenpool_is_coordinator",
        "gauge",
        "1 on the pool's coordinator, 0 on a member.",
    );
    let _ = writeln!(
        out,
        "xenpool_is_coordinator {}",
        u8::from(node.is_coordinator())
    );
    header(
        &mut out,
        "xenpool_replication_lag_generations",
        "gauge",
        "Database writes a host's copy is behind the coordinator's.",
    );
    for (uuid, lag) in &lags {
        let _ = writeln!(
            out,
            "xenpool_replication_lag_generations{{host=\"{}\"}} {lag}",
            label(uuid)
        );
    }
    let since = *m.last_replication.lock().unwrap_or_else(|e| e.into_inner());
    if let (Some(t), false) = (since, node.is_coordinator()) {
        header(
            &mut out,
            "xenpool_replication_last_contact_seconds",
            "gauge",
            "Seconds since this member last heard from its coordinator.",
        );
        let _ = writeln!(
            out,
            "xenpool_replication_last_contact_seconds {}",
            number(t.elapsed().as_secs_f64())
        );
    }
    Ok(out)
}

/// `GET /rrd_updates` (xcp-rrdd's export, which CloudStack reads its statistics from):
/// one row of the current value of every data source of this host (`host=true`) and of
/// the VMs running here, in the `xport` XML layout, legend entries
/// `AVERAGE:host|vm:<uuid>:<name>`. No history is kept, so whatever `start` asks, the
/// answer is the present.
pub async fn render_rrd_updates(
    node: &Node,
    with_host: bool,
) -> Result<String, xenpool_rpc::XenApiError> {
    let snapshot = Snapshot::read(node.hypervisor.clone()).await?;
    let mut columns: Vec<(String, f64)> = Vec::new();
    {
        let db = node.state.db();
        let host = &node.state.host;
        if with_host {
            if let Ok(h) = db.get::<HostRecord>(host) {
                for ds in snapshot.host_sources(&db, host) {
                    columns.push((format!("AVERAGE:host:{}:{}", h.uuid, ds.name), ds.value));
                }
            }
        }
        for (_, v) in db.all::<VmRecord>().filter(|(_, v)| {
            v.resident_on == *host
                && !v.is_control_domain
                && matches!(v.power_state, VmPowerState::Running | VmPowerState::Paused)
        }) {
            for ds in snapshot.vm_sources(&db, v) {
                columns.push((format!("AVERAGE:vm:{}:{}", v.uuid, ds.name), ds.value));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::with_capacity(256 + columns.len() * 96);
    let _ = write!(
        out,
        "<xport><meta><start>{now}</start><step>5</step><end>{now}</end><rows>1</rows>\
         <columns>{}</columns><legend>",
        columns.len()
    );
    for (name, _) in &columns {
        let _ = write!(out, "<entry>{}</entry>", xml_text(name));
    }
    let _ = write!(out, "</legend></meta><data><row><t>{now}</t>");
    for (_, value) in &columns {
        let _ = write!(out, "<v>{}</v>", number(*value));
    }
    out.push_str("</row></data></xport>\n");
    Ok(out)
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let m = Metrics::default();
        m.call_done(Some(Duration::from_micros(100)), true);
        m.call_done(Some(Duration::from_millis(3)), false);
        m.call_done(Some(Duration::from_secs(10)), true);
        m.call_done(None, true);
        assert_eq!(m.latency[0].load(Ordering::Relaxed), 1);
        assert_eq!(m.latency[3].load(Ordering::Relaxed), 1);
        assert_eq!(m.latency[BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(m.calls.load(Ordering::Relaxed), 4);
        let timed: u64 = m.latency.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        assert_eq!(timed, 3);
        assert_eq!(m.failed_calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.5), "0.5");
    }
}
