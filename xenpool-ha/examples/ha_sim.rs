//! Replays an HA scenario in the deterministic simulator, or runs random schedules
//! against the checker.
//!
//! ```text
//! cargo run --release -p xenpool-ha --example ha_sim -- SCENARIO.json
//! cargo run --release -p xenpool-ha --example ha_sim -- --trace SCENARIO.json  # plus decisions
//! cargo run --release -p xenpool-ha --example ha_sim -- --random N --seed S
//! cargo run --release -p xenpool-ha --example ha_sim -- --schedule S   # print random schedule S
//! cargo run --release -p xenpool-ha --example ha_sim -- --figures
//! ```
//! Exit codes: 0 no violation, 1 some violation, 2 bad input or usage.

use std::process::ExitCode;

use xenpool_ha::sim;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--figures" => {
            let table = sim::random::figures();
            println!("{table}");
            ExitCode::SUCCESS
        }
        [r, n, s, seed] if r == "--random" && s == "--seed" => {
            let (Ok(n), Ok(seed)) = (n.parse::<u64>(), seed.parse::<u64>()) else {
                eprintln!("ha_sim: --random N --seed S take non-negative integers");
                return ExitCode::from(2);
            };
            let report = sim::random::run_many(n, seed);
            println!("{}", report.to_json());
            if report.total_violations() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        [flag, seed] if flag == "--schedule" => {
            let Ok(seed) = seed.parse::<u64>() else {
                eprintln!("ha_sim: --schedule takes a non-negative integer");
                return ExitCode::from(2);
            };
            println!("{}", sim::random::schedule(seed).to_json());
            ExitCode::SUCCESS
        }
        [flag, path] if flag == "--trace" => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ha_sim: cannot read {path}: {e}");
                    return ExitCode::from(2);
                }
            };
            match sim::Scenario::from_json(&text).and_then(|s| sim::run_traced(&s)) {
                Ok((out, log)) => {
                    for l in log {
                        println!("{l}");
                    }
                    println!("{}", out.to_json());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ha_sim: {path}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        [path] if !path.starts_with("--") => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ha_sim: cannot read {path}: {e}");
                    return ExitCode::from(2);
                }
            };
            let out = match sim::Scenario::from_json(&text).and_then(|s| sim::run(&s)) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("ha_sim: {path}: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("{}", out.to_json());
            if out.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => {
            eprintln!(
                "usage: ha_sim SCENARIO.json | --trace SCENARIO.json | --random N --seed S | --schedule S | --figures"
            );
            ExitCode::from(2)
        }
    }
}
