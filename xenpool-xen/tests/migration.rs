//! Live migration between two simulated hosts: the destination ends with exactly the
//! source's memory, and the domain never runs on both hosts, whichever call fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;
use xenpool_xen::hypervisor::{
    DomId, DomainInfo, DomainSpec, DomainState, HostInfo, Hypervisor, PageSink,
};
use xenpool_xen::{
    migrate_domain, stream, Aftermath, LocalTarget, MigrationEvent, MigrationReceiver,
    MigrationTarget, PrecopyPolicy, SimulatedConfig, SimulatedHypervisor, WorkloadConfig, XenError,
    PAGE_SIZE,
};

const MIB: u64 = 1 << 20;
const UUID: &str = "6f1d1a34-0000-4000-8000-000000000001";

fn host() -> SimulatedHypervisor {
    SimulatedHypervisor::new(SimulatedConfig::default()).unwrap()
}

#[derive(Clone, Copy, Debug)]
struct Guest {
    memory: u64,
    populated: u64,
    seed: u64,
    pages_per_step: u32,
    working_set: u64,
    steps_per_read: u64,
}

fn start(h: &SimulatedHypervisor, g: &Guest) -> DomId {
    let d = h
        .create_domain(&DomainSpec {
            uuid: UUID.into(),
            name: "migrating".into(),
            memory: g.memory,
            vcpus: 2,
        })
        .unwrap();
    h.populate_guest(d, 0, g.populated, g.seed).unwrap();
    h.set_guest_workload(
        d,
        Some(WorkloadConfig {
            seed: g.seed ^ 0x5555,
            pages_per_step: g.pages_per_step,
            working_set_start: g.populated / 3,
            working_set_pages: g.working_set,
        }),
    )
    .unwrap();
    h.set_steps_per_read(g.steps_per_read);
    h.unpause(d).unwrap();
    d
}

fn running(h: &dyn Hypervisor) -> usize {
    h.list()
        .unwrap()
        .iter()
        .filter(|d| d.uuid == UUID && d.state == DomainState::Running)
        .count()
}

fn domain(h: &SimulatedHypervisor) -> Option<DomainInfo> {
    h.domain_by_uuid(UUID).unwrap()
}

/// Calls made on either host, a set of calls that fail, and the run-once check after every
/// call.
struct World<'a> {
    hosts: [&'a SimulatedHypervisor; 2],
    calls: AtomicU32,
    /// Calls that fail, each with whether it still takes effect and only its answer is
    /// lost.
    fail: BTreeMap<u32, bool>,
    violations: Mutex<Vec<String>>,
}

impl World<'_> {
    fn call<T>(
        &self,
        side: usize,
        name: &str,
        f: impl FnOnce(&SimulatedHypervisor) -> Result<T, XenError>,
    ) -> Result<T, XenError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = || XenError::Hypercall {
            call: "injected",
            source: std::io::Error::other(format!("call {n} ({name}) fails")),
        };
        let out = if let Some(&after) = self.fail.get(&n) {
            if after {
                let _ = f(self.hosts[side]);
            }
            Err(fault())
        } else {
            f(self.hosts[side])
        };
        let both = running(self.hosts[0]) + running(self.hosts[1]);
        if both > 1 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("running on both hosts after call {n} ({name})"));
        }
        out
    }
}

struct Faulty<'a> {
    world: &'a World<'a>,
    side: usize,
}

impl Hypervisor for Faulty<'_> {
    fn host_info(&self) -> Result<HostInfo, XenError> {
        self.world.call(self.side, "host_info", |h| h.host_info())
    }
    fn create_domain(&self, spec: &DomainSpec) -> Result<DomId, XenError> {
        self.world
            .call(self.side, "create", |h| h.create_domain(spec))
    }
    fn unpause(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "unpause", |h| h.unpause(d))
    }
    fn pause(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "pause", |h| h.pause(d))
    }
    fn suspend(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "suspend", |h| h.suspend(d))
    }
    fn resume(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "resume", |h| h.resume(d))
    }
    fn shutdown(&self, d: DomId, clean: bool) -> Result<(), XenError> {
        self.world
            .call(self.side, "shutdown", |h| h.shutdown(d, clean))
    }
    fn reboot(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "reboot", |h| h.reboot(d))
    }
    fn destroy(&self, d: DomId) -> Result<(), XenError> {
        self.world.call(self.side, "destroy", |h| h.destroy(d))
    }
    fn list(&self) -> Result<Vec<DomainInfo>, XenError> {
        self.world.call(self.side, "list", |h| h.list())
    }
    fn migration_begin(&self, d: DomId) -> Result<u64, XenError> {
        self.world
            .call(self.side, "migration_begin", |h| h.migration_begin(d))
    }
    fn migration_dirty_pages(&self, d: DomId) -> Result<Vec<u64>, XenError> {
        self.world.call(self.side, "migration_dirty_pages", |h| {
            h.migration_dirty_pages(d)
        })
    }
    fn migration_read_pages(
        &self,
        d: DomId,
        pages: &[u64],
        sink: &mut PageSink<'_>,
    ) -> Result<(), XenError> {
        self.world.call(self.side, "migration_read_pages", |h| {
            h.migration_read_pages(d, pages, sink)
        })
    }
    fn migration_abort(&self, d: DomId) -> Result<(), XenError> {
        self.world
            .call(self.side, "migration_abort", |h| h.migration_abort(d))
    }
    fn migration_complete(&self, d: DomId) -> Result<(), XenError> {
        self.world
            .call(self.side, "migration_complete", |h| h.migration_complete(d))
    }
    fn incoming_create(&self, spec: &DomainSpec) -> Result<DomId, XenError> {
        self.world
            .call(self.side, "incoming_create", |h| h.incoming_create(spec))
    }
    fn incoming_write_page(
        &self,
        d: DomId,
        index: u64,
        data: &[u8; PAGE_SIZE],
    ) -> Result<(), XenError> {
        // Page writes are many and alike: counting them would spread the faults thin.
        self.world.hosts[self.side].incoming_write_page(d, index, data)
    }
    fn incoming_finish(&self, d: DomId) -> Result<(), XenError> {
        self.world
            .call(self.side, "incoming_finish", |h| h.incoming_finish(d))
    }
}

#[derive(Debug)]
enum Outcome {
    Migrated { same_memory: bool, left_over: bool },
    Failed(Option<Aftermath>),
}

fn run(guest: &Guest, policy: &PrecopyPolicy, fail: BTreeMap<u32, bool>) -> (Outcome, u32) {
    let (a, b) = (host(), host());
    let src = start(&a, guest);
    let world = World {
        hosts: [&a, &b],
        calls: AtomicU32::new(0),
        fail,
        violations: Mutex::new(Vec::new()),
    };
    let source = Faulty {
        world: &world,
        side: 0,
    };
    let dest = Faulty {
        world: &world,
        side: 1,
    };
    let mut target = LocalTarget::new(&dest);
    let mut same_memory = false;
    let result = migrate_domain(&source, src, &mut target, policy, &mut |e| {
        if let MigrationEvent::DestinationResumed = e {
            // The source is paused and not yet destroyed: compare the two images now.
            let dst = domain(&b).expect("destination domain").domid;
            same_memory = a
                .with_guest_memory(src, |m| {
                    b.with_guest_memory(dst, |n| m.same_contents(n)).unwrap()
                })
                .unwrap();
        }
        ControlFlow::Continue(())
    });
    let violations = world.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    let outcome = match result {
        Ok(report) => {
            let d = domain(&b).expect("the VM on the destination");
            assert_eq!(d.state, DomainState::Running);
            match domain(&a) {
                // A destroy whose answer was lost is reported as not done: the daemon
                // retries it and finds nothing.
                None => {}
                Some(s) => {
                    assert_eq!(s.state, DomainState::Paused);
                    assert!(report.source_left_over.is_some());
                }
            }
            Outcome::Migrated {
                same_memory,
                left_over: report.source_left_over.is_some(),
            }
        }
        Err(XenError::MigrationFailed {
            aftermath,
            destination_left_over,
            ..
        }) => {
            let s = domain(&a).expect("a failed migration keeps the source domain");
            // Unless the destination said it could not remove its domain, it has none.
            if !destination_left_over {
                assert!(domain(&b).is_none(), "{:?}", domain(&b));
            }
            match aftermath {
                Aftermath::SourceRestored => {
                    assert_eq!(s.state, DomainState::Running);
                    assert_eq!(running(&b), 0);
                }
                Aftermath::SourcePaused => {
                    // Resuming failed; if only its answer was lost the source does run.
                    assert!(matches!(
                        s.state,
                        DomainState::Paused | DomainState::Running
                    ));
                    assert_eq!(running(&b), 0);
                }
                Aftermath::Unknown => assert_eq!(s.state, DomainState::Paused),
            }
            Outcome::Failed(Some(aftermath))
        }
        Err(_) => {
            // Failed before anything started.
            assert_eq!(domain(&a).unwrap().state, DomainState::Running);
            assert!(domain(&b).is_none());
            Outcome::Failed(None)
        }
    };
    (outcome, world.calls.load(Ordering::SeqCst))
}

fn guest_strategy() -> impl Strategy<Value = Guest> {
    (
        1u64..48,
        0u64..3000,
        any::<u64>(),
        0u32..48,
        1u64..3000,
        1u64..4,
    )
        .prop_map(
            |(mib, populated, seed, pages_per_step, working_set, steps)| Guest {
                memory: mib * MIB,
                populated: populated.min(mib * MIB / PAGE_SIZE as u64),
                seed,
                pages_per_step,
                working_set,
                steps_per_read: steps,
            },
        )
}

fn policy_strategy() -> impl Strategy<Value = PrecopyPolicy> {
    (1u32..8, 0u64..400, 1u64..5, any::<bool>(), 1usize..300).prop_map(
        |(max_rounds, threshold, factor, shrink, batch)| PrecopyPolicy {
            max_rounds,
            dirty_threshold_pages: threshold,
            max_sent_factor: factor,
            stop_when_not_shrinking: shrink,
            batch_pages: batch,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Without faults, the destination runs with exactly the memory the source had when it
    /// was paused, and the source domain is gone.
    #[test]
    fn migration_reproduces_the_source_memory(guest in guest_strategy(), policy in policy_strategy()) {
        let (outcome, _) = run(&guest, &policy, BTreeMap::new());
        match outcome {
            Outcome::Migrated { same_memory, left_over } => {
                prop_assert!(same_memory);
                prop_assert!(!left_over);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Whichever calls fail, and whether a failing call took effect or not, the domain never
    /// runs on both hosts, and the error says truly where it is (checked in `run`).
    #[test]
    fn the_domain_runs_once_under_injected_failures(
        guest in guest_strategy(),
        policy in policy_strategy(),
        picks in proptest::collection::vec((any::<proptest::sample::Index>(), any::<bool>()), 1..4),
    ) {
        let (_, calls) = run(&guest, &policy, BTreeMap::new());
        let fail: BTreeMap<u32, bool> = picks
            .iter()
            .map(|(i, after)| (i.index(calls as usize + 2) as u32, *after))
            .collect();
        let (outcome, _) = run(&guest, &policy, fail);
        if let Outcome::Migrated { same_memory, .. } = outcome {
            prop_assert!(same_memory);
        }
    }
}

/// Every call failing in turn, alone or with one of the next two, on one busy guest.
#[test]
fn each_step_failing_in_turn() {
    let guest = Guest {
        memory: 16 * MIB,
        populated: 800,
        seed: 7,
        pages_per_step: 20,
        working_set: 300,
        steps_per_read: 1,
    };
    let policy = PrecopyPolicy {
        batch_pages: 64,
        ..PrecopyPolicy::default()
    };
    let (_, calls) = run(&guest, &policy, BTreeMap::new());
    assert!(calls > 10, "{calls}");
    let mut seen = BTreeSet::new();
    for n in 0..calls {
        let mut plans = vec![BTreeMap::from([(n, false)]), BTreeMap::from([(n, true)])];
        // A second fault soon after the first hits the clean-up of the first.
        for extra in 1..=2 {
            for (a, b) in [(false, false), (true, false), (false, true), (true, true)] {
                plans.push(BTreeMap::from([(n, a), (n + extra, b)]));
            }
        }
        for plan in plans {
            let (outcome, _) = run(&guest, &policy, plan);
            seen.insert(
                format!("{outcome:?}")
                    .split('(')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            );
            if let Outcome::Failed(Some(a)) = outcome {
                seen.insert(format!("{a:?}"));
            }
        }
    }
    // The failures reach every kind of ending, so none of the checks in `run` is idle.
    for kind in ["SourceRestored", "SourcePaused", "Unknown"] {
        assert!(seen.contains(kind), "{kind} never happened: {seen:?}");
    }
}

#[test]
fn a_cancelled_migration_leaves_the_source_running() {
    let (a, b) = (host(), host());
    let guest = Guest {
        memory: 16 * MIB,
        populated: 1000,
        seed: 1,
        pages_per_step: 10,
        working_set: 100,
        steps_per_read: 1,
    };
    let d = start(&a, &guest);
    let mut target = LocalTarget::new(&b);
    let mut batches = 0;
    let policy = PrecopyPolicy {
        batch_pages: 100,
        ..PrecopyPolicy::default()
    };
    let r = migrate_domain(&a, d, &mut target, &policy, &mut |e| {
        if let MigrationEvent::Progress(_) = e {
            batches += 1;
        }
        if batches == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match r {
        Err(XenError::MigrationFailed {
            aftermath: Aftermath::SourceRestored,
            cause,
            ..
        }) => assert!(matches!(*cause, XenError::MigrationCancelled)),
        other => panic!("{other:?}"),
    }
    assert_eq!(domain(&a).unwrap().state, DomainState::Running);
    assert!(domain(&b).is_none());
    // The source can migrate again afterwards.
    let mut target = LocalTarget::new(&b);
    migrate_domain(&a, d, &mut target, &policy, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(domain(&b).unwrap().state, DomainState::Running);
    assert!(domain(&a).is_none());
}

#[test]
fn progress_rises_to_one_and_the_pause_copies_little() {
    let (a, b) = (host(), host());
    let guest = Guest {
        memory: 64 * MIB,
        populated: 8000,
        seed: 3,
        pages_per_step: 8,
        working_set: 400,
        steps_per_read: 1,
    };
    let d = start(&a, &guest);
    let mut target = LocalTarget::new(&b);
    let mut fractions = Vec::new();
    let mut paused_at = None;
    let report = migrate_domain(&a, d, &mut target, &PrecopyPolicy::default(), &mut |e| {
        match e {
            MigrationEvent::Progress(p) => fractions.push(p.fraction),
            MigrationEvent::SourcePaused => paused_at = Some(fractions.len()),
            MigrationEvent::DestinationResumed => {}
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    assert!((fractions.last().copied().unwrap() - 1.0).abs() < 1e-9);
    assert!(paused_at.is_some());
    assert!(report.rounds >= 2, "{report:?}");
    assert!(report.pages_sent >= 8000);
    // The working set bounds what the pause must copy.
    assert!(report.paused_pages <= 400, "{report:?}");
    assert!(report.paused_bytes < report.bytes_sent / 10, "{report:?}");
}

#[test]
fn only_a_running_domain_migrates_and_a_full_destination_refuses() {
    let (a, b) = (host(), host());
    let guest = Guest {
        memory: 8 * MIB,
        populated: 100,
        seed: 9,
        pages_per_step: 0,
        working_set: 1,
        steps_per_read: 1,
    };
    let d = start(&a, &guest);
    a.pause(d).unwrap();
    let mut target = LocalTarget::new(&b);
    let r = migrate_domain(&a, d, &mut target, &PrecopyPolicy::default(), &mut |_| {
        ControlFlow::Continue(())
    });
    assert!(matches!(r, Err(XenError::InvalidState { .. })), "{r:?}");
    assert!(domain(&b).is_none());
    a.unpause(d).unwrap();
    // A destination without room refuses at once; the source runs on.
    let small = SimulatedHypervisor::new(SimulatedConfig {
        memory_total: 2 * (1 << 30),
        control_domain_memory: (1 << 30) + (1 << 30) - 4 * MIB,
        ..SimulatedConfig::default()
    })
    .unwrap();
    let mut target = LocalTarget::new(&small);
    let r = migrate_domain(&a, d, &mut target, &PrecopyPolicy::default(), &mut |_| {
        ControlFlow::Continue(())
    });
    match r {
        Err(XenError::MigrationFailed {
            step: xenpool_xen::MigrationStep::Prepare,
            aftermath: Aftermath::SourceRestored,
            destination_left_over: false,
            cause,
        }) => assert!(matches!(*cause, XenError::NotEnoughMemory { .. })),
        other => panic!("{other:?}"),
    }
    assert_eq!(domain(&a).unwrap().state, DomainState::Running);
    assert!(small.domain_by_uuid(UUID).unwrap().is_none());
}

/// A target that flips one bit of the n-th chunk on its way, as a faulty link would.
struct Corrupting<'a> {
    inner: LocalTarget<'a>,
    chunk: usize,
    seen: usize,
}

impl MigrationTarget for Corrupting<'_> {
    fn prepare(&mut self, spec: &DomainSpec) -> Result<(), XenError> {
        self.inner.prepare(spec)
    }
    fn send(&mut self, chunk: &[u8]) -> Result<(), XenError> {
        self.seen += 1;
        if self.seen == self.chunk {
            let mut bad = chunk.to_vec();
            let at = bad.len() / 2;
            bad[at] ^= 0x10;
            return self.inner.send(&bad);
        }
        self.inner.send(chunk)
    }
    fn resume(&mut self) -> Result<(), XenError> {
        self.inner.resume()
    }
    fn abort(&mut self) -> Result<(), XenError> {
        self.inner.abort()
    }
}

#[test]
fn a_corrupted_chunk_fails_the_migration_and_the_source_runs_on() {
    let guest = Guest {
        memory: 16 * MIB,
        populated: 600,
        seed: 11,
        pages_per_step: 5,
        working_set: 50,
        steps_per_read: 1,
    };
    for chunk in [1, 2, 5] {
        let (a, b) = (host(), host());
        let d = start(&a, &guest);
        let mut target = Corrupting {
            inner: LocalTarget::new(&b),
            chunk,
            seen: 0,
        };
        let policy = PrecopyPolicy {
            batch_pages: 100,
            ..PrecopyPolicy::default()
        };
        match migrate_domain(&a, d, &mut target, &policy, &mut |_| {
            ControlFlow::Continue(())
        }) {
            Err(XenError::MigrationFailed {
                aftermath: Aftermath::SourceRestored,
                destination_left_over: false,
                cause,
                ..
            }) => assert!(
                matches!(*cause, XenError::MigrationStream { .. }),
                "{cause:?}"
            ),
            other => panic!("chunk {chunk}: {other:?}"),
        }
        assert_eq!(domain(&a).unwrap().state, DomainState::Running);
        assert!(domain(&b).is_none());
    }
}

#[test]
fn a_receiver_refuses_a_stream_for_another_size() {
    let b = host();
    let spec = DomainSpec {
        uuid: UUID.into(),
        name: "x".into(),
        memory: 8 * MIB,
        vcpus: 1,
    };
    let mut r = MigrationReceiver::prepare(&b, &spec).unwrap();
    let mut s = Vec::new();
    stream::encode_header(&mut s, &stream::StreamHeader { page_count: 4 });
    assert!(matches!(
        r.feed(&b, &s),
        Err(XenError::MigrationStream { .. })
    ));
    // Nothing runs until finished, and a broken stream never finishes.
    assert!(r.finish(&b).is_err());
    assert_eq!(domain(&b).unwrap().state, DomainState::Paused);
    r.abort(&b).unwrap();
    assert!(domain(&b).is_none());
}

/// A backend without live migration refuses every migration call.
struct Plain;

impl Hypervisor for Plain {
    fn host_info(&self) -> Result<HostInfo, XenError> {
        Err(XenError::NotXen("plain".into()))
    }
    fn create_domain(&self, _: &DomainSpec) -> Result<DomId, XenError> {
        Ok(DomId(1))
    }
    fn unpause(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn pause(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn suspend(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn resume(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn shutdown(&self, _: DomId, _: bool) -> Result<(), XenError> {
        Ok(())
    }
    fn reboot(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn destroy(&self, _: DomId) -> Result<(), XenError> {
        Ok(())
    }
    fn list(&self) -> Result<Vec<DomainInfo>, XenError> {
        Ok(vec![DomainInfo {
            domid: DomId(1),
            uuid: UUID.into(),
            name: "plain".into(),
            state: DomainState::Running,
            memory: MIB,
            vcpus: 1,
        }])
    }
}

#[test]
fn a_backend_without_migration_refuses_and_nothing_moves() {
    let b = host();
    let mut target = LocalTarget::new(&b);
    match migrate_domain(
        &Plain,
        DomId(1),
        &mut target,
        &PrecopyPolicy::default(),
        &mut |_| ControlFlow::Continue(()),
    ) {
        Err(XenError::MigrationFailed {
            step: xenpool_xen::MigrationStep::Begin,
            aftermath: Aftermath::SourceRestored,
            destination_left_over: false,
            cause,
        }) => assert!(matches!(*cause, XenError::Unsupported { .. })),
        other => panic!("{other:?}"),
    }
    assert!(domain(&b).is_none());
    assert!(matches!(
        Plain.incoming_create(&DomainSpec {
            uuid: UUID.into(),
            name: "x".into(),
            memory: MIB,
            vcpus: 1
        }),
        Err(XenError::Unsupported { .. })
    ));
}
