//! The `plan` tool's logic, through `run_plan_tool`, on the shipped sample pools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use xenpool_ha::run_plan_tool;

const SMALL: &str = include_str!("../examples/pools/small.json");
const REACH: &str = include_str!("../examples/pools/reach.json");

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).expect("stdout is one JSON object")
}

#[test]
fn answers_tolerance_and_overcommit() {
    let out = run_plan_tool(&[], SMALL);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json(&out.stdout);
    assert_eq!(v["max_host_failures_to_tolerate"], 1);
    assert_eq!(v["exact"], true);
    assert_eq!(v["overcommitted"], false);
    assert!(v.get("plan").is_none());
}

#[test]
fn prints_a_plan_for_failed_hosts() {
    let out = run_plan_tool(&args(&["--failed", "h1"]), SMALL);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json(&out.stdout);
    let restarts = v["plan"]["restarts"].as_array().unwrap();
    let vms: Vec<&str> = restarts.iter().map(|r| r["vm"].as_str().unwrap()).collect();
    assert_eq!(
        vms,
        ["db", "batch"],
        "protected first within the same order"
    );
    assert!(restarts.iter().all(|r| r["host"] != "h1"));
}

#[test]
fn reach_pool_is_overcommitted_and_reports_missing_plan() {
    let out = run_plan_tool(&args(&["--failed=a,b"]), REACH);
    assert_eq!(out.code, 1);
    let v = json(&out.stdout);
    assert_eq!(v["overcommitted"], true);
    assert_eq!(v["max_host_failures_to_tolerate"], 1);
    assert!(v["plan"]["error"].is_string());
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "not json"),
        (&[], r#"{"hosts":[{"memory_total":1}]}"#),
        (&[], r#"{"hosts":[{"uuid":"h","memory_total":-5}]}"#),
        (
            &[],
            r#"{"hosts":[],"vms":[{"uuid":"v","memory":1,"resident_on":"nope"}]}"#,
        ),
        (
            &[],
            r#"{"hosts":[],"vms":[{"uuid":"v","memory":1,"ha_restart_priority":"always"}]}"#,
        ),
        (&["--failed", "nope"], SMALL),
        (&["--failed"], SMALL),
        (&["--bogus"], SMALL),
    ];
    for (a, input) in cases {
        let out = run_plan_tool(&args(a), input);
        assert_eq!(out.code, 2, "{a:?} {input}");
        assert!(out.stdout.is_empty());
        assert!(out.stderr.starts_with("plan: "), "{}", out.stderr);
    }
}

#[test]
fn defaults_and_unknown_keys() {
    let input = r#"{"hosts":[{"uuid":"h1","memory_total":100,"colour":"blue"},
                             {"uuid":"h2","memory_total":100}],
                    "vms":[{"uuid":"v","memory":60,"resident_on":"h1","ha_restart_priority":"restart"}],
                    "extra":1}"#;
    let out = run_plan_tool(&[], input);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = json(&out.stdout);
    assert_eq!(v["max_host_failures_to_tolerate"], 1);
    assert_eq!(v["host_failures_to_tolerate"], Value::Null);
}
