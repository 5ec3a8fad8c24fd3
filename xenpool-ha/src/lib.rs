//! HA failover planning for a xenpool resource pool, as a pure library.
//!
//! Given the live hosts (free memory, the SRs and networks they reach, enabled or not) and
//! the VMs (memory, where they run, `ha_restart_priority`, `order`, `start_delay`, what they
//! need to reach), it answers: how many host failures the pool tolerates, the concrete
//! restart plan for a given set of failed hosts (and crashed VMs), and whether the pool is
//! overcommitted for its `ha_host_failures_to_tolerate`. A cloud manager can call it without
//! any xenpool daemon; the pool daemon calls it from its database on every relevant change.
//!
//! This crate must never do I/O, read a clock, draw randomness, or spawn threads: every
//! answer is a function of its arguments only. It depends on no async runtime, socket or
//! system library.
//!
//! # Semantics
//! - Free memory of a host = `memory_total − memory_overhead − Σ memory of every VM resident
//!   on it` (any priority), clamped at 0. Survivors' VMs stay where they are.
//! - Only *live* hosts count. A failure set is a set of live hosts; the tolerance is at most
//!   live hosts − 1. Hosts that are not live are neither failures nor targets.
//! - Disabled live hosts can fail (their VMs then need a home) but never receive VMs, as in
//!   xapi, whose planner only counts enabled hosts as targets.
//! - A VM may restart on a host that reaches all of its SRs and networks.
//! - Protected (`restart`) VMs must all be placed. `best-effort` VMs are placed after them
//!   where room is left; VMs with priority `""` and halted VMs (`resident_on` none) need
//!   nothing.
//! - A running protected VM whose host is not live is already waiting for a restart: it
//!   needs a place in every scenario, including no further failure
//!   ([`Tolerance::plan_exists`] is false when it has none).
//! - Feasibility only shrinks as more hosts fail (a plan for S works for any subset of S), so
//!   "every set of up to k" is "every set of exactly k".
//!
//! # Method, and where it stops being exact
//! For each candidate k the planner must know whether *every* k-set of live hosts is
//! survivable. It works in layers, cheapest first:
//! 1. **Bounds over all k-sets at once** (module `bounds`). Two sufficient conditions, each
//!    a sum of per-host costs, so the worst k-set is found by sorting:
//!    - a divisible relaxation where each host offers its free memory less the largest
//!      protected VM that could land there; it is feasible exactly when Hall's condition
//!      holds for every set of VM classes (VMs with the same SRs and networks), and a
//!      feasible relaxation rounds to a real placement (Lenstra–Shmoys–Tardos: at most one
//!      split VM per host);
//!    - the failure condition of first-fit decreasing: it only loses about x per host for
//!      VMs of size ≥ x, and the planner's first greedy *is* a first-fit decreasing, so a
//!      set proven this way also gets a concrete plan.
//!
//!    Capacity arguments with full free memory (Hall sums per class, and "fail every host
//!    big enough for this VM") give failure sets proven fatal, hence an upper bound. When
//!    the two meet, the answer is exact with no search.
//! 2. **Enumeration of the gap levels**: hosts with the same enabled state, free memory,
//!    reach and protected VMs are interchangeable, so failure sets are multisets over those
//!    symmetry classes; subtrees whose every completion passes a sufficient condition are
//!    skipped without visiting them.
//! 3. **Per failure set**: necessary capacity checks (infeasible), three greedy packings
//!    (feasible), then exact branch-and-bound bin packing with host-symmetry breaking and
//!    memoisation of dead-end states.
//!
//! The answer is exact whenever the bounds meet or the enumeration of the levels between
//! them finishes within its budget: on every pool of up to about a dozen hosts (checked
//! against a brute-force oracle on random pools of up to 8), on pools of identical hosts of
//! any size, and in practice on pools of tens of hosts whose tolerance is small. It stops
//! being exact when the gap between the bounds spans failure sets too many to enumerate
//! (budget: about 10⁸ elementary steps, 10⁶ branch-and-bound nodes, or a level above 16
//! failures) — typically large, lightly loaded pools tolerating tens of failures. Then the
//! planner returns the largest k it has *proven* and sets [`Tolerance::exact`] to false; it
//! never claims a tolerance it has not proven. Pools with more than ten VM classes merge
//! classes (by intersecting where they may go) for the relaxation, which can only lower the
//! proven bound.
//!
//! # Layout
//! - `model`: the input types ([`PlannerHost`], [`PlannerVm`], [`RestartPriority`],
//!   [`PlannerInput`]), validation, hypothetical priorities and the JSON pool format.
//! - `problem`: the input compiled to indices, classes and host bitsets.
//! - `pack`: one failure set: necessary checks, greedy packings, exact branch-and-bound.
//! - `bounds`: bounds holding for all failure sets of one size at once.
//! - `tolerance`: [`Planner`], [`Tolerance`], the tolerance and overcommit answers.
//! - `plan`: [`FailureSet`], [`FailoverPlan`], [`Restart`]: concrete plans.
//! - [`pool_input`]: the pool database as planner input, and hypothetical changes to it.
//! - `tool`: [`run_plan_tool`], the logic of the `plan` example.
//! - `contact`: [`ContactLiveness`], liveness from the time since a host was heard from.
//! - `gate`: the failover-plan guard ([`guarded_failures`], [`check_change`]) and the pool's
//!   plan status and messages ([`PlanStatus`], [`plan_messages`]).
//! - `error`: [`HaError`].
#![deny(missing_docs)]

mod bounds;
mod contact;
mod error;
mod gate;
mod hostset;
pub mod machine;
mod model;
mod pack;
mod plan;
pub mod pool_input;
mod problem;
mod restart;
pub mod sim;
pub mod survival;
mod timeouts;
mod tolerance;
mod tool;

pub use contact::ContactLiveness;
pub use error::HaError;
pub use gate::{
    check_change, guarded_failures, plan_messages, Force, GateError, PlanMessage, PlanStatus,
};
pub use hostset::HostSet;
pub use machine::{Action, HaConfig, Heartbeat, HostMachine, HostSpec, Input, Slot};
pub use model::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};
pub use plan::{plan_for_failure, FailoverPlan, FailureSet, Restart};
pub use restart::VmSpec;
pub use timeouts::HaTimeouts;
pub use tolerance::{is_overcommitted, max_host_failures_to_tolerate, Planner, Tolerance};
pub use tool::{run_plan_tool, ToolOutput};
