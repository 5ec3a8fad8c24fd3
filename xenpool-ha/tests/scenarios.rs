//! Every scenario under `tests/scenarios/` replayed in the simulator and compared with its
//! expected output (`NAME.expected.json`), Proxmox-style: a scenario and its expected log
//! side by side. Set `XENPOOL_UPDATE_SCENARIOS=1` to rewrite the expected files after a
//! deliberate change, then review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use xenpool_ha::sim::{run, Scenario};

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenario directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_matches_its_expected_output() {
    let update = std::env::var_os("XENPOOL_UPDATE_SCENARIOS").is_some();
    let list = scenarios();
    assert!(list.len() >= 23, "scenarios missing: {}", list.len());
    let mut failures = Vec::new();
    for path in list {
        let text = std::fs::read_to_string(&path).unwrap();
        let scenario = Scenario::from_json(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let out = run(&scenario)
            .unwrap_or_else(|e| panic!("{path:?}: {e}"))
            .to_json();
        assert_eq!(out["violations"], Value::Array(vec![]), "{path:?}: {out}");
        let expected_path = path.with_extension("expected.json");
        if update {
            let mut s = serde_json::to_string_pretty(&out).unwrap();
            s.push('\n');
            std::fs::write(&expected_path, s).unwrap();
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("{expected_path:?}: {e}")),
        )
        .unwrap();
        if expected != out {
            failures.push(format!("{path:?}\n  expected {expected}\n  got      {out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_replay_is_deterministic() {
    for path in scenarios().into_iter().take(5) {
        let s = Scenario::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(run(&s).unwrap(), run(&s).unwrap(), "{path:?}");
    }
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    for (text, needle) in [
        ("{", "not JSON"),
        ("[]", "object"),
        (
            r#"{"timeout": 10, "until": 5, "hosts": [{"name": "h1", "memory": 1}], "events": [{"at": 1, "crash": "h9"}]}"#,
            "unknown host",
        ),
        (
            r#"{"timeout": 10, "until": 5, "hosts": [{"name": "h1", "memory": 1}], "events": [{"at": 1, "explode": "h1"}]}"#,
            "unknown event",
        ),
        (
            r#"{"timeout": 10, "until": 5, "hosts": [{"name": "h1", "memory": 1}], "vms": [{"name": "v", "memory": 1, "priority": "always"}]}"#,
            "priority",
        ),
        (r#"{"until": 5, "hosts": []}"#, "timeout"),
        (r#"{"timeout": 1e300, "until": 5, "hosts": []}"#, "timeout"),
        (
            r#"{"timeout": 10, "until": 5, "hosts": [{"name": "h1", "memory": 1}], "vms": [{"name": "v", "memory": 1, "start_delay": 9223372036854775807}]}"#,
            "start_delay",
        ),
    ] {
        let err = Scenario::from_json(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // Parsed, but refused by the machines: no hosts, more than 64 hosts.
    let s = Scenario::from_json(r#"{"timeout": 10, "until": 5, "hosts": []}"#).unwrap();
    assert!(run(&s).is_err());
    // Parsed, but refused by the machines: T below the 5 s minimum.
    let s = Scenario::from_json(
        r#"{"timeout": 2, "until": 5, "hosts": [{"name": "h1", "memory": 1}]}"#,
    )
    .unwrap();
    assert!(run(&s).unwrap_err().to_string().contains("5 s minimum"));
}

#[test]
fn the_issue_example_parses_and_runs() {
    let text = r#"{"timeout": 10, "seed": 1, "until": 120.0, "external_manager": false,
     "host_failures_to_tolerate": 1, "coordinator": "h1",
     "hosts": [{"name": "h1", "memory": 68719476736}, {"name": "h2", "memory": 68719476736},
               {"name": "h3", "memory": 68719476736}],
     "vms": [{"name": "vm1", "memory": 4294967296, "on": "h2",
              "priority": "restart", "order": 0, "start_delay": 0}],
     "events": [{"at": 5.0, "crash": "h2"},
                {"at": 5.0, "freeze": "h2"}, {"at": 40.0, "thaw": "h2"},
                {"at": 5.0, "partition": [["h1"], ["h2", "h3"]]},
                {"at": 5.0, "statefile_lost": ["h2"]}, {"at": 9.0, "statefile_back": ["h2"]},
                {"at": 5.0, "toolstack_hang": "h2"},
                {"at": 60.0, "heal": true}]}"#;
    let out = run(&Scenario::from_json(text).unwrap()).unwrap().to_json();
    assert_eq!(out["violations"], Value::Array(vec![]));
    for key in [
        "coordinator",
        "coordinator_changes",
        "fenced",
        "live",
        "vms",
        "messages",
    ] {
        assert!(out.get(key).is_some(), "{key}");
    }
}
