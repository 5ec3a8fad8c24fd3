//! Random small pools: the planner must agree with a brute-force oracle, and every plan it
//! gives must be valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{can_run, free, oracle_feasible, oracle_tolerance, set, GIB};
use proptest::prelude::*;
use xenpool_ha::{
    FailureSet, HaError, Planner, PlannerHost, PlannerInput, PlannerVm, RestartPriority,
};

fn reach(bits: u8, names: [&str; 2]) -> BTreeSet<String> {
    // Mostly everything: bit patterns 0 and 1 mean "both".
    match bits % 5 {
        2 => set(&[names[0]]),
        3 => set(&[names[1]]),
        _ => set(&names),
    }
}

fn need(bits: u8, names: [&str; 2]) -> BTreeSet<String> {
    match bits % 6 {
        0 | 1 => set(&[names[0]]),
        2 => set(&[names[1]]),
        3 => set(&names),
        _ => BTreeSet::new(),
    }
}

prop_compose! {
    fn arb_host(i: usize)(total in 6u64..32, over in 0u64..2, live in 0u8..25, enabled in 0u8..10,
                          srs in any::<u8>(), nets in any::<u8>()) -> PlannerHost {
        PlannerHost {
            id: format!("h{i}"),
            memory_total: total * GIB,
            memory_overhead: over * GIB,
            live: live != 0,
            enabled: enabled != 0,
            srs: reach(srs, ["sa", "sb"]),
            networks: reach(nets, ["na", "nb"]),
        }
    }
}

fn arb_pool() -> impl Strategy<Value = PlannerInput> {
    (1usize..=8)
        .prop_flat_map(|n| {
            let hosts: Vec<_> = (0..n).map(arb_host).collect();
            let vms = prop::collection::vec(
                (
                    1u64..9,
                    0usize..(n + 1),
                    0u8..10,
                    -1i64..3,
                    any::<u8>(),
                    any::<u8>(),
                ),
                0..(5 * n).min(40),
            );
            (hosts, vms)
        })
        .prop_map(|(hosts, vms)| {
            let n = hosts.len();
            let vms = vms
                .into_iter()
                .enumerate()
                .map(|(i, (mem, on, pr, order, srs, nets))| PlannerVm {
                    id: format!("v{i}"),
                    memory: mem * GIB,
                    resident_on: (on < n).then(|| format!("h{on}")),
                    priority: match pr {
                        0..=5 => RestartPriority::Restart,
                        6 | 7 => RestartPriority::BestEffort,
                        _ => RestartPriority::None,
                    },
                    order,
                    start_delay: i64::from(srs % 3),
                    srs: need(srs, ["sa", "sb"]),
                    networks: need(nets, ["na", "nb"]),
                })
                .collect();
            PlannerInput { hosts, vms }
        })
}

/// Checks a plan against the pool: memory, reach, every protected VM placed, nothing moved
/// that did not need to move.
fn assert_valid(input: &PlannerInput, failed: &BTreeSet<String>, plan: &xenpool_ha::FailoverPlan) {
    let hosts: HashMap<&str, &PlannerHost> =
        input.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let vms: HashMap<&str, &PlannerVm> = input.vms.iter().map(|v| (v.id.as_str(), v)).collect();
    let mut extra: HashMap<&str, u64> = HashMap::new();
    let mut placed = BTreeSet::new();
    for r in &plan.restarts {
        let h = hosts[r.host.as_str()];
        let v = vms[r.vm.as_str()];
        assert!(
            h.live && h.enabled,
            "target {} not a live enabled host",
            h.id
        );
        assert!(!failed.contains(&h.id), "target {} failed", h.id);
        assert!(can_run(h, v), "{} cannot reach what {} needs", h.id, v.id);
        let home = v.resident_on.as_deref().expect("restarted VM was running");
        assert!(
            failed.contains(home) || !hosts[home].live,
            "{} moved needlessly",
            v.id
        );
        *extra.entry(h.id.as_str()).or_default() += v.memory;
        assert!(placed.insert(v.id.clone()), "{} placed twice", v.id);
    }
    for (h, load) in extra {
        assert!(
            load <= free(input, hosts[h]),
            "host {h} over its free memory"
        );
    }
    for v in &input.vms {
        let stranded = v
            .resident_on
            .as_deref()
            .is_some_and(|h| failed.contains(h) || !hosts[h].live);
        if stranded && v.priority == RestartPriority::Restart {
            assert!(placed.contains(&v.id), "protected {} not placed", v.id);
        }
    }
    // Order: by order (negative last), then protected before best-effort.
    let keys: Vec<_> = plan
        .restarts
        .iter()
        .map(|r| (r.order < 0, r.order, r.priority))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "restart order");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_brute_force(input in arb_pool()) {
        let planner = Planner::new(&input).unwrap();
        let got = planner.max_host_failures_to_tolerate();
        let (want, exists) = oracle_tolerance(&input);
        prop_assert!(got.exact, "not exact on a small pool: {got:?}");
        prop_assert_eq!((got.max_failures, got.plan_exists), (want, exists));
        for k in 0..=input.hosts.len() as u32 {
            prop_assert_eq!(planner.is_overcommitted(k), !exists || k > want);
        }
        // Every failure set of live hosts: a valid plan exactly when the oracle finds one.
        let live: Vec<usize> = (0..input.hosts.len()).filter(|&i| input.hosts[i].live).collect();
        for mask in 0u32..(1 << live.len()) {
            let idx: BTreeSet<usize> =
                (0..live.len()).filter(|b| mask & (1 << b) != 0).map(|b| live[b]).collect();
            let names: BTreeSet<String> = idx.iter().map(|&i| input.hosts[i].id.clone()).collect();
            let failure = FailureSet { hosts: names.iter().cloned().collect(), vms: vec![] };
            match planner.plan(&failure) {
                Ok(plan) => assert_valid(&input, &names, &plan),
                Err(e) => {
                    prop_assert!(matches!(e, HaError::NoPlan { .. }), "{e}");
                    prop_assert!(!oracle_feasible(&input, &idx), "planner missed a plan");
                }
            }
        }
    }
}
