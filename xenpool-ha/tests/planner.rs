//! Edge cases of the planner's answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{host, set, vm, GIB};
use xenpool_ha::{
    is_overcommitted, max_host_failures_to_tolerate, plan_for_failure, FailureSet, HaError,
    Planner, PlannerInput, RestartPriority,
};

use RestartPriority::{BestEffort, Restart};

fn tol(input: &PlannerInput) -> (u32, bool) {
    let t = max_host_failures_to_tolerate(input).unwrap();
    (t.max_failures, t.exact)
}

#[test]
fn no_protected_vms_tolerates_all_but_one() {
    let input = PlannerInput {
        hosts: (0..5).map(|i| host(&format!("h{i}"), 64)).collect(),
        vms: vec![vm("v", 60, Some("h0"), BestEffort)],
    };
    assert_eq!(tol(&input), (4, true));
}

#[test]
fn one_host_tolerates_nothing_and_empty_pool_too() {
    let input = PlannerInput {
        hosts: vec![host("h", 64)],
        vms: vec![vm("v", 1, Some("h"), Restart)],
    };
    assert_eq!(tol(&input), (0, true));
    assert_eq!(tol(&PlannerInput::default()), (0, true));
    assert!(is_overcommitted(&input, 1).unwrap());
    assert!(!is_overcommitted(&input, 0).unwrap());
}

#[test]
fn vm_too_big_for_any_survivor() {
    let input = PlannerInput {
        hosts: vec![host("big", 128), host("s1", 32), host("s2", 32)],
        vms: vec![vm("huge", 100, Some("big"), Restart)],
    };
    assert_eq!(tol(&input), (0, true));
    let err = plan_for_failure(&input, &["big".into()]).unwrap_err();
    assert!(matches!(err, HaError::NoPlan { .. }));
    // Failing a small host strands nothing.
    assert!(plan_for_failure(&input, &["s1".into()])
        .unwrap()
        .restarts
        .is_empty());
}

#[test]
fn reach_constraints_decide() {
    let mut input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 64), host("c", 64)],
        vms: vec![vm("v", 8, Some("a"), Restart)],
    };
    input.vms[0].srs = set(&["local-a", "sr"]);
    input.hosts[0].srs = set(&["local-a", "sr"]);
    assert_eq!(tol(&input), (0, true), "only a reaches local-a");
    input.hosts[1].srs = set(&["local-a", "sr"]);
    assert_eq!(tol(&input), (1, true));
    let plan = plan_for_failure(&input, &["a".into()]).unwrap();
    assert_eq!(plan.restarts[0].host, "b");
}

#[test]
fn disabled_hosts_fail_but_receive_nothing() {
    let mut input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 64), host("c", 64)],
        vms: vec![
            vm("v", 40, Some("a"), Restart),
            vm("w", 40, Some("b"), Restart),
        ],
    };
    assert_eq!(tol(&input), (1, true));
    input.hosts[2].enabled = false;
    // c is the only host with room for either VM once a or b fails.
    assert_eq!(tol(&input), (0, true));
}

#[test]
fn non_live_hosts_do_not_count_and_their_vms_wait() {
    let mut input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 64), host("dead", 64)],
        vms: vec![vm("v", 40, Some("dead"), Restart)],
    };
    input.hosts[2].live = false;
    let t = max_host_failures_to_tolerate(&input).unwrap();
    assert_eq!((t.max_failures, t.plan_exists), (1, true));
    input.vms[0].memory = 100 * GIB;
    let t = max_host_failures_to_tolerate(&input).unwrap();
    assert_eq!((t.max_failures, t.plan_exists), (0, false));
    assert!(is_overcommitted(&input, 0).unwrap());
    assert!(matches!(
        plan_for_failure(&input, &["dead".into()]),
        Err(HaError::HostNotLive(_))
    ));
}

#[test]
fn halted_and_unprotected_need_nothing() {
    let input = PlannerInput {
        hosts: vec![host("a", 16), host("b", 16)],
        vms: vec![
            vm("halted", 64, None, Restart),
            vm("plain", 15, Some("a"), RestartPriority::None),
            vm("maybe", 15, Some("b"), BestEffort),
        ],
    };
    assert_eq!(tol(&input), (1, true));
    let plan = plan_for_failure(&input, &["b".into()]).unwrap();
    assert!(plan.restarts.is_empty());
    assert_eq!(plan.unplaced, vec!["maybe".to_string()]);
}

#[test]
fn plan_orders_by_order_then_priority_negative_last() {
    let mut input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 64)],
        vms: vec![
            vm("late", 1, Some("a"), Restart),
            vm("first", 1, Some("a"), Restart),
            vm("be", 1, Some("a"), BestEffort),
            vm("second", 1, Some("a"), Restart),
        ],
    };
    input.vms[0].order = -1;
    input.vms[3].order = 1;
    input.vms[3].start_delay = 30;
    let plan = plan_for_failure(&input, &["a".into()]).unwrap();
    let names: Vec<&str> = plan.restarts.iter().map(|r| r.vm.as_str()).collect();
    assert_eq!(names, ["first", "be", "second", "late"]);
    assert_eq!(plan.restarts[2].start_delay, 30);
}

#[test]
fn failed_vms_free_their_memory_and_restart() {
    let input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 32)],
        vms: vec![
            vm("big", 40, Some("a"), Restart),
            vm("fill", 30, Some("b"), Restart),
        ],
    };
    let planner = Planner::new(&input).unwrap();
    let plan = planner
        .plan(&FailureSet {
            hosts: vec![],
            vms: vec!["big".into()],
        })
        .unwrap();
    assert_eq!(plan.restarts[0].host, "a", "its own memory is free again");
    assert!(matches!(
        planner.plan(&FailureSet {
            hosts: vec![],
            vms: vec!["nope".into()]
        }),
        Err(HaError::UnknownVm(_))
    ));
}

#[test]
fn hypothetical_priorities() {
    let input = PlannerInput {
        hosts: vec![host("a", 64), host("b", 64)],
        vms: vec![
            vm("v", 40, Some("a"), Restart),
            vm("w", 40, Some("b"), Restart),
        ],
    };
    assert_eq!(tol(&input), (0, true));
    let mut o = BTreeMap::new();
    o.insert("w".to_string(), BestEffort);
    o.insert("v".to_string(), BestEffort);
    assert_eq!(tol(&input.with_priorities(&o).unwrap()), (1, true));
    o.insert("zz".to_string(), BestEffort);
    assert!(matches!(
        input.with_priorities(&o),
        Err(HaError::UnknownVm(_))
    ));
    assert!(matches!(
        "always".parse::<RestartPriority>(),
        Err(xenpool_core::CoreError::InvalidValue { .. })
    ));
}

#[test]
fn validation() {
    let mut input = PlannerInput {
        hosts: vec![host("a", 64), host("a", 64)],
        vms: vec![],
    };
    assert!(matches!(
        Planner::new(&input),
        Err(HaError::DuplicateHost(_))
    ));
    input.hosts[1].id = "b".into();
    input.vms = vec![vm("v", 1, Some("a"), Restart), vm("v", 1, None, Restart)];
    assert!(matches!(Planner::new(&input), Err(HaError::DuplicateVm(_))));
    input.vms = vec![vm("v", 1, Some("zz"), Restart)];
    assert!(matches!(Planner::new(&input), Err(HaError::UnknownHost(_))));
}

#[test]
fn symmetric_pool_beyond_brute_force_is_exact() {
    // 40 identical hosts: C(40, k) failure sets, but one symmetry class.
    let hosts: Vec<_> = (0..40).map(|i| host(&format!("h{i}"), 100)).collect();
    let vms = (0..40)
        .flat_map(|i| {
            let h = format!("h{i}");
            (0..3).map(move |j| vm(&format!("v{i}-{j}"), 20, Some(h.as_str()), Restart))
        })
        .collect();
    let input = PlannerInput { hosts, vms };
    // Each host: 60 used, 40 free = two 20-GiB VMs. k failures strand 3k VMs; survivors
    // hold 2(40 − k): 3k ≤ 80 − 2k → k ≤ 16.
    assert_eq!(tol(&input), (16, true));
}
