//! HA failover planning for a xenpool resource pool, as a pure library.
//!
//! Given the live hosts (free memory, the SRs and networks they reach, enabled or not) and
//! the VMs (memory, where they run, `ha_restart_priority`, `order`, `start_delay`, what they
//! need to reach), it answers: how many host failures the pool tolerates, the concrete
//! restart plan for a given set of failed hosts (and crashed VMs), and whether the pool is
//! overcommitted for its `ha_host_failures_to_tolerate`. A cloud manager can call it without
//! any xenpool daemon; the pool daemon calls it from its database on every relevant change.
//!
//! It also holds every HA *decision* of a running pool as a sans-IO state machine per host
//! ([`HostMachine`]: liveness, survival, fencing, coordinator election, VM restarts), and
//! a deterministic simulator ([`sim`]) that runs N machines against scripted or random
//! faults with a checker of the pool's safety invariants.
//!
//! This crate must never do I/O, read a clock, draw OS randomness, or spawn threads: every
//! answer is a function of its arguments only (the simulator's "randomness" is a seeded
//! splitmix64 stream, part of its input). It depends on no async runtime, socket or system
//! library.
//!
//! # The HA state machine
//! One [`HostMachine`] per host, quinn-proto style: `handle(now, Input)`, then drain
//! `poll_action()`, then call again by `poll_timeout()`. `now` is any monotonic clock of the
//! host; hosts need no common clock, only clocks running at the same rate.
//! - Inputs ([`Input`]): a heartbeat (from whom, on which path, with the sender's epoch,
//!   liveset and acknowledgements), the statefile slots read (or the read failing), the
//!   result of writing the own slot, the toolstack health answer, VM-running / start-failed
//!   reports and VM HA settings from the pool database, a tick.
//! - Outputs ([`Action`]): send a heartbeat, write the own slot, read the statefile, check
//!   the toolstack, arm/feed/stop the watchdog, fence now, liveset changed, become
//!   coordinator / follow coordinator X, restart these VMs on these hosts, raise a message.
//!
//! ## Timeouts (all from the HA timeout `T`, at least 5 s; [`HaTimeouts`])
//! Interval `I = min(T/20, 250 ms)` (heartbeat, slot write, slot read, watchdog feed);
//! claim dwell `D = 2I`; grace `G = 4I`; watchdog slack `ε = I`; feed horizon `T/2`;
//! toolstack check every `T/4`, fence when it has not answered for `T`.
//!
//! ## Leases and the safety margin
//! Every heartbeat of host P carries a sequence number; every heartbeat of a member Q
//! acknowledges the latest sequence number it has from each host it still keeps. P's
//! **lease** ends at `min over members Q of (send time of P's latest seq acked by Q) + T`.
//! A member Q gives P up only after a rendezvous that stopped acknowledging P; Q's
//! **lease bound** for P is `(arrival at Q of the last P-seq Q acknowledged) + T`. As an
//! arrival is never before its send, `lease(P) ≤ lease_bound_Q(P)` with no clock
//! agreement and no bound on message delay.
//!
//! P feeds its watchdog only while `now < lease(P)` (or after winning a rendezvous, which
//! gives it a fresh lease over its new liveset), and each feed sets the deadline to
//! `min(lease(P), now + T/2) + G`. So P's watchdog fires, whatever its software does
//! (frozen, hung, partitioned), by `lease(P) + G ≤ lease_bound_Q(P) + G`. The survivors
//! restart P's VMs at `lease_bound(P) + G + ε`, never before: **margin `ε = I` beyond a
//! watchdog that fires on time** (250 ms at every `T ≥ 5 s`), which is what a real watchdog's
//! granularity and a late tick may eat. The property test
//! `machine::tests::watchdog_fires_before_peers_may_restart` checks
//! `watchdog_deadline(P) ≤ lease_bound_Q(P) + G + ε` under random delays and losses; the
//! simulator's checker checks, at every restart, that no un-fenced host still runs the VM.
//! A host that was frozen finds on its first input after waking whether its watchdog
//! deadline has passed, and then fences before acting on anything
//! ([`HostMachine::handle`]); after any silence longer than `2I` it first reads the
//! statefile, holding every other input, and fences if a newer liveset lacks it (or if the
//! read fails and its lease is over). With `T/2 + G + I < T` a frozen host's watchdog always
//! fires before anyone can judge its statefile slot stale (the `freeze` event stops software,
//! not the watchdog: `tests/scenarios/frozen_host.json`).
//!
//! For a crash at `t0`, the last acknowledged arrival is about `t0`, so the protected VMs
//! restart at about `t0 + T + G + ε = t0 + T + 1.25 s` at most (`T + 1.0 s` measured: a
//! heartbeat interval of the lease has already run), and a new coordinator acts at about
//! `t0 + T` (it waits for the old one's lease bound, see below).
//!
//! ## Survival rule (at least as strong as xha's), and why two partitions never both live
//! When P's lease runs out it enters a **rendezvous**: it claims `C(P)` = itself plus the
//! members with two-way contact (heard within `T/2` and acknowledging within `T/2`), stops
//! acknowledging everyone else, and writes the claim into its statefile slot. It then:
//! - fences at once if a fresh slot (updated within `T`) shows a newer epoch whose liveset
//!   lacks P, or a better claim of the same epoch that lacks P;
//! - waits (yields) if a better claim includes P, adopting the newer epoch when it shows up
//!   (by heartbeat or slot);
//! - wins, when its claim has been on the statefile for `D` and a read shows no better
//!   claim: new epoch, liveset `C(P)`.
//!
//! Claims are ordered: larger wins; equal size goes to the claim holding the lowest index
//! (the host listed first); further ties by member list (`survival::compare_claims`, a
//! strict total order). A host that cannot write the statefile never claims, so: a
//! partition with the statefile decides (xha rule 1); the larger partition wins; a tie goes
//! to the lowest index; 2-host pools are arbitrated by the statefile (both reach it: h1
//! wins; only one reaches it: that one wins; neither: both fence). If every host loses the
//! statefile but all still see each other, no lease runs out, nobody claims, all keep
//! running (rule 2); any further failure then fences everyone, as in xha.
//!
//! *Proof sketch (one winning claim per epoch).* Suppose P and Q win different claims of
//! epoch e, P first at `d_P ≤ d_Q`. If `C(Q)` beats `C(P)`, Q's claim was not on the
//! statefile at P's read at `d_P` (P would have fenced or yielded), so Q wrote it after
//! `d_P` and read the statefile at `d_Q ≥ d_P + D`, when P's slot already showed epoch
//! `e+1` without Q (P writes it at `d_P`): Q fences. If `C(P)` beats `C(Q)`, Q sees it at
//! `d_Q` (P's claim has been on the statefile since before `d_P`) and fences or yields. Both
//! need P's slot fresh at `d_Q`: P keeps writing it, and a winner whose write fails within
//! `T` of winning fences itself, while Q's rendezvous lasts at most `G` past its lease (its
//! watchdog), a lease P stopped extending when it claimed. A host that has not entered the
//! rendezvous yet learns the new epoch by heartbeat or slot and adopts it or fences. Hence
//! every liveset of epoch `e+1` is one claim, every member of it was in the liveset of `e`,
//! and every host left out fences (by itself, or by its watchdog at `lease + G`) before the
//! survivors touch its VMs. Asymmetric links only make claims smaller, never two of them
//! winners. No rule admits a partition without the statefile (a strict majority without it
//! would let more hosts live in 3+ pools; not done).
//!
//! ## Coordinator election
//! When the liveset of a new epoch lacks the coordinator, every member computes the same
//! successor: the lowest index in the new liveset (identical on every member, since an
//! epoch has one liveset). The successor acts only from the old coordinator's lease bound
//! on ([`HostMachine::is_coordinator`] also requires its own lease), and the old one stops
//! acting when its lease ends, which is earlier: two un-fenced hosts never both act as
//! coordinator. Members emit `FollowCoordinator(X)`.
//!
//! ## Restarts
//! At a given-up host's `lease bound + G + ε` the coordinator raises `HA_HOST_FAILED`,
//! marks its VMs halted and asks the failover planner (the same [`Planner`]) to place the
//! protected and best-effort ones on live, enabled hosts (hosts given up but not yet surely
//! fenced are shown live but disabled, so their VMs are not taken). Starts go out in plan
//! order (`order` ascending, negative last; protected before best-effort), each followed by
//! its `start_delay`. Without a plan for all protected VMs, it places greedily by order and
//! size; a protected VM that fits nowhere raises `HA_PROTECTED_VM_RESTART_FAILED` once and
//! is retried every `T` (and after any failed start). In **external-manager mode** the pool
//! keeps its liveset, elects and fences, but restarts nothing: it raises `HA_HOST_FAILED`
//! and `HA_PROTECTED_VM_STRANDED` (one per stranded protected VM) for the manager.
//!
//! # How HA is tested
//! `tests/scenarios/*.json` are replayed by the simulator and compared with their
//! `*.expected.json` (one per case of xha's survival rule and per 2-host split, plus crash,
//! freeze, toolstack hang, external manager, no capacity, restart order). `tests/random.rs`
//! runs random schedules (2-16 hosts, crashes, freezes, partitions, asymmetric cuts,
//! statefile loss per host, toolstack hangs, tick jitter, message delay, then a heal)
//! against the checker, and a proptest over small schedules that shrinks a failure to a
//! minimal scenario to keep. The `ha_sim` example runs a scenario, `--random N --seed S`,
//! or `--figures`.
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
//! - `timeouts`: [`HaTimeouts`], every timer from `T`.
//! - `hostset`: [`HostSet`], host-index bitmaps carried by heartbeats and slots.
//! - [`survival`]: the order between survival claims.
//! - [`machine`]: [`HostMachine`], its [`Input`]s and [`Action`]s, [`HaConfig`].
//! - `restart`: the coordinator's restart book ([`VmSpec`]).
//! - [`sim`]: the deterministic simulator, scenario format, checker, random schedules and
//!   figures.
//! - [`arming`]: what a host's toolstack and HA daemon tell each other ([`arming::Arming`],
//!   [`arming::HaEvent`], [`arming::HealthReport`]).
//! - [`wire`]: the byte codecs of heartbeats and statefile slots, tagged with the arming.
//! - `error`: [`HaError`].
#![deny(missing_docs)]

pub mod arming;
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
pub mod wire;

pub use contact::ContactLiveness;
pub use error::HaError;
pub use gate::{
    check_change, check_failures_to_tolerate, guarded_failures, plan_messages, GateError,
    PlanMessage, PlanStatus,
};
pub use hostset::HostSet;
pub use machine::{Action, HaConfig, Heartbeat, HostMachine, HostSpec, Input, Slot};
pub use model::{PlannerHost, PlannerInput, PlannerVm, RestartPriority};
pub use plan::{plan_for_failure, FailoverPlan, FailureSet, Restart};
pub use restart::VmSpec;
pub use timeouts::HaTimeouts;
pub use tolerance::{is_overcommitted, max_host_failures_to_tolerate, Planner, Tolerance};
pub use tool::{run_plan_tool, ToolOutput};
