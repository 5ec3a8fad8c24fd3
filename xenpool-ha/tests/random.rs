//! Random fault schedules against the checker, and proptest-shrunk small schedules.
//!
//! `cargo test` runs `XENPOOL_HA_SCHEDULES` random schedules, default 10,000 (about a
//! minute on two cores: the workspace builds xenpool-ha optimised even in the dev profile
//! for this). The same run from the command line:
//! `cargo run --release -p xenpool-ha --example ha_sim -- --random 10000 --seed 1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use xenpool_ha::sim::random::run_many;
use xenpool_ha::sim::{run, EventKind, Scenario, SimEvent, SimHost, SimVm};
use xenpool_ha::RestartPriority;

#[test]
fn random_schedules_break_no_invariant() {
    let count = std::env::var("XENPOOL_HA_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let report = run_many(count, 1);
    assert_eq!(report.schedules, count);
    assert_eq!(report.total_violations(), 0, "{}", report.to_json());
}

fn event(n: usize) -> impl Strategy<Value = SimEvent> {
    let host = 0..n;
    (20u32..200, 0u8..8, host.clone(), host, any::<u16>()).prop_map(move |(at, k, a, b, mask)| {
        let h = |i: usize| format!("h{}", i + 1);
        let side = |want: bool| -> Vec<String> {
            (0..n)
                .filter(|i| (mask >> i) & 1 == u16::from(want))
                .map(h)
                .collect()
        };
        let kind = match k {
            0 => EventKind::Crash(h(a)),
            1 => EventKind::Freeze(h(a)),
            2 => EventKind::Thaw(h(a)),
            3 => EventKind::Partition(vec![side(true), side(false)]),
            4 => EventKind::Block(vec![(h(a), h(b))]),
            5 => EventKind::StatefileLost(side(true)),
            6 => EventKind::ToolstackHang(h(a)),
            _ => EventKind::Heal,
        };
        SimEvent {
            at: f64::from(at) / 10.0,
            kind,
        }
    })
}

fn small_schedule() -> impl Strategy<Value = Scenario> {
    (2usize..6)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(event(n), 0..6),
                any::<u64>(),
            )
        })
        .prop_map(|(n, mut events, seed)| {
            events.sort_by(|a, b| a.at.total_cmp(&b.at));
            let last = events.last().map_or(0.0, |e| e.at);
            events.push(SimEvent {
                at: last + 1.0,
                kind: EventKind::Heal,
            });
            for i in 0..n {
                events.push(SimEvent {
                    at: last + 1.0,
                    kind: EventKind::Thaw(format!("h{}", i + 1)),
                });
            }
            Scenario {
                timeout: 5.0,
                seed,
                until: last + 25.0,
                external_manager: false,
                host_failures_to_tolerate: 1,
                coordinator: Some("h1".into()),
                hosts: (0..n)
                    .map(|i| SimHost {
                        name: format!("h{}", i + 1),
                        memory: 16 << 30,
                    })
                    .collect(),
                vms: (0..2 * n)
                    .map(|i| SimVm {
                        name: format!("vm{}", i + 1),
                        memory: 2 << 30,
                        on: Some(format!("h{}", i % n + 1)),
                        priority: RestartPriority::Restart,
                        order: 0,
                        start_delay: 0,
                    })
                    .collect(),
                events,
                tick_jitter: 0.02,
                message_delay: 0.05,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A failing schedule shrinks to a minimal one, printed as a scenario file to keep
    /// under `tests/scenarios/`.
    #[test]
    fn small_schedules_break_no_invariant(s in small_schedule()) {
        let out = run(&s).unwrap();
        prop_assert!(
            out.violations.is_empty(),
            "violations {:?}\nscenario to keep:\n{}",
            out.violations,
            s.to_json()
        );
    }
}
