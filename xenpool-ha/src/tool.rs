//! The logic of the `plan` example tool, kept here so it is tested without running a
//! process. The example only reads the file and prints.

use serde_json::{json, Value};

use crate::{FailureSet, HaError, Planner, PlannerInput};

/// What the tool prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// One JSON object and a newline, or empty on bad input.
    pub stdout: String,
    /// A message when something went wrong.
    pub stderr: String,
    /// 0: answered; 1: `--failed` given and no plan exists for it; 2: bad input or usage.
    pub code: i32,
}

fn bad(msg: impl std::fmt::Display) -> ToolOutput {
    ToolOutput {
        stdout: String::new(),
        stderr: format!("plan: {msg}\n"),
        code: 2,
    }
}

/// Runs the tool on the text of a pool description. `options` are the arguments after the
/// file name: optionally `--failed h1,h2` (or `--failed=h1,h2`).
pub fn run_plan_tool(options: &[String], pool_json: &str) -> ToolOutput {
    let mut failed: Option<Vec<String>> = None;
    let mut args = options.iter();
    while let Some(a) = args.next() {
        let list = if a == "--failed" {
            match args.next() {
                Some(v) => v.as_str(),
                None => return bad("--failed needs a comma-separated list of host ids"),
            }
        } else if let Some(v) = a.strip_prefix("--failed=") {
            v
        } else {
            return bad(format!("unknown argument {a:?}"));
        };
        let hosts = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        failed.get_or_insert_with(Vec::new).extend(hosts);
    }
    let (input, ftt) = match PlannerInput::from_json(pool_json) {
        Ok(x) => x,
        Err(e) => return bad(e),
    };
    let planner = match Planner::new(&input) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    if let Some(hosts) = &failed {
        if let Err(e) = planner.problem.resolve_hosts(&input, hosts) {
            return bad(e);
        }
    }
    let tolerance = planner.max_host_failures_to_tolerate();
    let configured = ftt.unwrap_or(0);
    let overcommitted = !tolerance.plan_exists || tolerance.max_failures < configured;
    let mut out = json!({
        "max_host_failures_to_tolerate": tolerance.max_failures,
        "exact": tolerance.exact,
        "plan_exists": tolerance.plan_exists,
        "host_failures_to_tolerate": ftt,
        "overcommitted": overcommitted,
    });
    let mut code = 0;
    let mut stderr = String::new();
    if let Some(hosts) = failed {
        let failure = FailureSet {
            hosts,
            vms: Vec::new(),
        };
        let plan = match planner.plan(&failure) {
            Ok(plan) => json!({
                "restarts": plan.restarts.iter().map(|r| json!({
                    "vm": r.vm,
                    "host": r.host,
                    "order": r.order,
                    "start_delay": r.start_delay,
                    "priority": r.priority.as_str(),
                })).collect::<Vec<Value>>(),
                "unplaced": plan.unplaced,
            }),
            Err(e @ (HaError::NoPlan { .. } | HaError::SearchBudgetExhausted { .. })) => {
                code = 1;
                stderr = format!("plan: {e}\n");
                json!({ "error": e.to_string() })
            }
            Err(e) => return bad(e),
        };
        out["plan"] = plan;
    }
    ToolOutput {
        stdout: format!("{out}\n"),
        stderr,
        code,
    }
}
