//! Reads a pool description (JSON) and prints how many host failures it tolerates, whether
//! it is overcommitted, and optionally the plan for a given failure set.
//!
//! ```text
//! cargo run --release -p xenpool-ha --example plan -- POOL.json [--failed h1,h2]
//! ```
//! Exit codes: 0 answered, 1 no plan for `--failed`, 2 bad input or usage.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, options)) = args.split_first() else {
        eprintln!("usage: plan POOL.json [--failed h1,h2]");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("plan: cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let out = xenpool_ha::run_plan_tool(options, &text);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    let _ = std::io::stdout().flush();
    ExitCode::from(u8::try_from(out.code).unwrap_or(2))
}
