//! Random fault schedules for the checker, and the figures table.

use std::time::Instant;

use serde_json::{json, Value};

use super::{run, EventKind, Rng, Scenario, SimEvent, SimHost, SimVm, VIOLATION_KINDS};
use crate::RestartPriority;

const GIB: u64 = 1 << 30;

/// A random schedule for `seed`: 2 to 16 hosts, 1 to 6 faults among crashes, freezes
/// (thawed later or at the heal), partitions, asymmetric link cuts, statefile loss per
/// host, toolstack hangs; then a heal (which also thaws and un-hangs), and enough time
/// after it to check convergence.
pub fn schedule(seed: u64) -> Scenario {
    let mut r = Rng::new(seed);
    let n = 2 + r.below(15);
    let timeout = if r.below(4) == 0 { 10.0 } else { 5.0 };
    let hosts: Vec<SimHost> = (0..n)
        .map(|i| SimHost {
            name: format!("h{}", i + 1),
            memory: (8 + 8 * r.below(4) as u64) * GIB,
        })
        .collect();
    let vms: Vec<SimVm> = (0..n * 2)
        .map(|i| SimVm {
            name: format!("vm{}", i + 1),
            memory: (1 + r.below(6) as u64) * GIB,
            on: Some(hosts[r.below(n)].name.clone()),
            priority: match r.below(3) {
                0 => RestartPriority::BestEffort,
                1 => RestartPriority::None,
                _ => RestartPriority::Restart,
            },
            order: r.below(3) as i64,
            start_delay: r.below(2) as i64,
        })
        .collect();
    let name = |r: &mut Rng| hosts[r.below(n)].name.clone();
    let subset = |r: &mut Rng| -> Vec<String> {
        hosts
            .iter()
            .filter(|_| r.below(2) == 0)
            .map(|h| h.name.clone())
            .collect()
    };
    let mut events = Vec::new();
    let faults = 1 + r.below(6);
    let mut t = 2.0;
    let mut frozen = Vec::new();
    let mut hung = Vec::new();
    for _ in 0..faults {
        t += r.unit() * timeout;
        let kind = match r.below(8) {
            0 => EventKind::Crash(name(&mut r)),
            1 => {
                let h = name(&mut r);
                frozen.push(h.clone());
                EventKind::Freeze(h)
            }
            2 | 3 => {
                let groups = 2 + r.below(2);
                let mut g: Vec<Vec<String>> = vec![Vec::new(); groups];
                for h in &hosts {
                    g[r.below(groups)].push(h.name.clone());
                }
                EventKind::Partition(g)
            }
            4 => {
                let pairs = (0..1 + r.below(3))
                    .map(|_| (name(&mut r), name(&mut r)))
                    .filter(|(a, b)| a != b)
                    .collect();
                EventKind::Block(pairs)
            }
            5 => EventKind::StatefileLost(subset(&mut r)),
            6 => EventKind::StatefileBack(subset(&mut r)),
            _ => {
                let h = name(&mut r);
                hung.push(h.clone());
                EventKind::ToolstackHang(h)
            }
        };
        events.push(SimEvent { at: round(t), kind });
    }
    let heal = round(t + r.unit() * timeout);
    events.push(SimEvent {
        at: heal,
        kind: EventKind::Heal,
    });
    for h in frozen {
        events.push(SimEvent {
            at: heal,
            kind: EventKind::Thaw(h),
        });
    }
    for h in hung {
        events.push(SimEvent {
            at: heal,
            kind: EventKind::ToolstackBack(h),
        });
    }
    let t_ha = crate::HaTimeouts::new(std::time::Duration::from_secs_f64(timeout));
    let bound = t_ha
        .map(|t| super::convergence_bound(&t).as_secs_f64())
        .unwrap_or(4.0 * timeout);
    Scenario {
        timeout,
        seed,
        until: round(heal + bound + 1.0),
        external_manager: r.below(8) == 0,
        host_failures_to_tolerate: 1,
        coordinator: Some(name(&mut r)),
        hosts,
        vms,
        events,
        tick_jitter: round(r.unit() * 0.05),
        message_delay: round(0.001 + r.unit() * 0.1),
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counts over many random schedules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RandomReport {
    /// Schedules run.
    pub schedules: u64,
    /// Per violation kind, how many schedules broke it.
    pub violations: Vec<(&'static str, u64)>,
    /// Seeds of the schedules with a violation (the first few).
    pub failing_seeds: Vec<u64>,
    /// Schedules whose input was refused (should be none).
    pub errors: u64,
}

impl RandomReport {
    /// Violations of every kind together.
    pub fn total_violations(&self) -> u64 {
        self.violations.iter().map(|(_, c)| c).sum::<u64>() + self.errors
    }

    /// One JSON line.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"schedules": self.schedules, "errors": self.errors,
            "failing_seeds": self.failing_seeds});
        for (k, c) in &self.violations {
            v[*k] = json!(c);
        }
        v
    }
}

/// Runs `count` schedules, seeds `seed, seed+1, …`.
pub fn run_many(count: u64, seed: u64) -> RandomReport {
    let mut report = RandomReport {
        violations: VIOLATION_KINDS.iter().map(|k| (*k, 0)).collect(),
        ..RandomReport::default()
    };
    for i in 0..count {
        let s = schedule(seed.wrapping_add(i));
        report.schedules += 1;
        match run(&s) {
            Ok(out) => {
                for v in &out.violations {
                    if let Some(e) = report.violations.iter_mut().find(|(k, _)| *k == v.kind) {
                        e.1 += 1;
                    }
                }
                if !out.violations.is_empty() && report.failing_seeds.len() < 20 {
                    report.failing_seeds.push(s.seed);
                }
            }
            Err(_) => report.errors += 1,
        }
    }
    report
}

/// A pool of `n` hosts with two protected VMs on the last host, for the figures.
pub fn figure_pool(timeout: f64, event: EventKind, at: f64) -> Scenario {
    let hosts: Vec<SimHost> = (0..3)
        .map(|i| SimHost {
            name: format!("h{}", i + 1),
            memory: 64 * GIB,
        })
        .collect();
    let vms = (0..4)
        .map(|i| SimVm {
            name: format!("vm{}", i + 1),
            memory: 4 * GIB,
            on: Some(format!("h{}", 1 + i % 3)),
            priority: RestartPriority::Restart,
            order: 0,
            start_delay: 0,
        })
        .collect();
    Scenario {
        timeout,
        seed: 1,
        until: at + 4.0 * timeout,
        external_manager: false,
        host_failures_to_tolerate: 1,
        coordinator: Some("h1".into()),
        hosts,
        vms,
        events: vec![SimEvent { at, kind: event }],
        tick_jitter: 0.0,
        message_delay: 0.001,
    }
}

/// The figures: for T = 5, 10, 30 s, host crash → its protected VMs running elsewhere,
/// coordinator crash → new coordinator (simulated seconds after the crash); then the wall
/// time of 10,000 random schedules. Returns a Markdown table.
pub fn figures() -> String {
    let mut s = String::from(
        "| T (s) | host crash → protected VMs running elsewhere (s) | goal T+2 | coordinator crash → new coordinator (s) | goal T+1 |\n|---|---|---|---|---|\n",
    );
    for t in [5.0, 10.0, 30.0] {
        let at = 20.3;
        let host = run(&figure_pool(t, EventKind::Crash("h3".into()), at))
            .ok()
            .and_then(|o| {
                o.vms
                    .iter()
                    .filter(|(_, (_, r))| r.is_some())
                    .filter_map(|(_, (_, r))| *r)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            })
            .map(|x| x - at);
        let coord = run(&figure_pool(t, EventKind::Crash("h1".into()), at))
            .ok()
            .and_then(|o| o.coordinator_changes.first().map(|c| c.0 - at));
        let f = |x: Option<f64>| x.map_or("none".to_string(), |x| format!("{x:.2}"));
        s.push_str(&format!(
            "| {t} | {} | {} | {} | {} |\n",
            f(host),
            t + 2.0,
            f(coord),
            t + 1.0
        ));
    }
    let start = Instant::now();
    let report = run_many(10_000, 1);
    let wall = start.elapsed().as_secs_f64();
    s.push_str(&format!(
        "\n10,000 random schedules: {wall:.1} s wall time, {} with a violation ({})\n",
        report.total_violations(),
        report.to_json()
    ));
    s
}
