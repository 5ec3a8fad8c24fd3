//! Live migration of a domain between two hosts by pre-copy: the memory is copied while the
//! guest runs, then again for what it wrote meanwhile, round after round, until what is
//! left is small; then the guest is paused, the rest is copied, and it resumes on the
//! destination.
//!
//! # The one rule
//! At no instant does the domain run on both hosts. The source is paused before the
//! destination is told to resume. On any failure before the destination was told to
//! resume, the incoming domain is removed and the source resumed. If the destination was
//! told to resume and the answer is an error, the source resumes only once the destination
//! confirmed it removed its domain; otherwise the source stays paused and the failure says
//! so ([`Aftermath::Unknown`]): a VM stopped until someone looks is better than a VM
//! running twice.
//!
//! # Who does what
//! - [`migrate_domain`] drives the sending side against a [`Hypervisor`] and a
//!   [`MigrationTarget`], the receiving host as the sender sees it.
//! - [`precopy_decision`] is the policy: given the figures of the round about to start, go
//!   on copying live or stop and copy. A pure function of its arguments.
//! - [`MigrationReceiver`] is the receiving side: it creates the paused incoming domain,
//!   takes the byte stream ([`crate::stream`]) in chunks, writes the pages, and resumes the
//!   domain when the stream is complete. [`LocalTarget`] joins it to the sender in one
//!   process; a daemon joins them over HTTP(S) instead.
//!
//! # Over HTTP(S)
//! A daemon maps the four [`MigrationTarget`] calls to requests to the destination host,
//! which keeps one [`MigrationReceiver`] per migration between them (it holds no reference
//! to the hypervisor, so it can live in the daemon's state): `prepare` creates it from the
//! [`DomainSpec`], each `send` chunk is fed to [`MigrationReceiver::feed`] (one streamed
//! request body, or one request per chunk), `resume` calls [`MigrationReceiver::finish`],
//! `abort` calls [`MigrationReceiver::abort`]. An answer lost on the way must come back as
//! an error: for `resume` that makes the sender wait for `abort` to succeed before it
//! resumes the source, which is what keeps the rule above.
//!
//! Nothing here reads a clock: figures are pages and bytes, and a caller that wants times
//! takes them from the events [`migrate_domain`] reports.

use std::fmt;
use std::ops::ControlFlow;

use crate::hypervisor::{DomId, DomainSpec, DomainState, Hypervisor};
use crate::memory::PAGE_SIZE;
use crate::stream::{self, Decoder, Record, StreamHeader};
use crate::XenError;

/// When pre-copy stops and the guest is paused for the last round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecopyPolicy {
    /// Live rounds at most (the first full copy included); the stop-and-copy round comes
    /// after them.
    pub max_rounds: u32,
    /// Stop when at most this many pages are left to send: the pause copies them.
    pub dirty_threshold_pages: u64,
    /// Stop when live rounds would have sent more than this many times the guest's pages:
    /// a guest writing faster than the link carries would otherwise never converge.
    pub max_sent_factor: u64,
    /// Stop when a round (after the second) has no fewer pages to send than the one
    /// before: the guest dirties as fast as we copy, so more rounds buy nothing.
    pub stop_when_not_shrinking: bool,
    /// Pages per chunk handed to the target (and between progress reports).
    pub batch_pages: usize,
}

impl Default for PrecopyPolicy {
    fn default() -> Self {
        PrecopyPolicy {
            max_rounds: 8,
            dirty_threshold_pages: 256,
            max_sent_factor: 3,
            stop_when_not_shrinking: true,
            batch_pages: 256,
        }
    }
}

/// The figures of the round about to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundStats {
    /// Its number, from 1 (the full copy).
    pub round: u32,
    /// Pages it would send.
    pub to_send: u64,
    /// Pages the previous round sent (0 before the first).
    pub last_sent: u64,
    /// Pages sent so far.
    pub total_sent: u64,
    /// Pages in the guest.
    pub memory_pages: u64,
}

/// What to do with the round about to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Copy it while the guest runs.
    Continue,
    /// Pause the guest and copy it, and whatever the guest wrote since, as the last round.
    StopAndCopy,
}

/// The pre-copy policy: stop when little is left, when the round limit is reached, when
/// too much was sent already, or when rounds stop shrinking.
pub fn precopy_decision(policy: &PrecopyPolicy, stats: &RoundStats) -> Decision {
    let budget = policy
        .max_sent_factor
        .saturating_mul(stats.memory_pages.max(1));
    let not_shrinking =
        policy.stop_when_not_shrinking && stats.round > 2 && stats.to_send >= stats.last_sent;
    if stats.to_send <= policy.dirty_threshold_pages
        || stats.round > policy.max_rounds
        || stats.total_sent.saturating_add(stats.to_send) > budget
        || not_shrinking
    {
        Decision::StopAndCopy
    } else {
        Decision::Continue
    }
}

/// Which step of a migration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationStep {
    /// Reading the domain's description on the source.
    Describe,
    /// Creating the incoming domain on the destination.
    Prepare,
    /// Turning dirty logging on at the source.
    Begin,
    /// A live round.
    Round(u32),
    /// Pausing the source.
    Pause,
    /// The stop-and-copy round.
    FinalRound,
    /// Resuming the destination.
    Resume,
}

impl fmt::Display for MigrationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationStep::Describe => f.write_str("describing the domain"),
            MigrationStep::Prepare => f.write_str("preparing the destination"),
            MigrationStep::Begin => f.write_str("starting dirty logging"),
            MigrationStep::Round(n) => write!(f, "copying round {n}"),
            MigrationStep::Pause => f.write_str("pausing the source"),
            MigrationStep::FinalRound => f.write_str("copying the last round"),
            MigrationStep::Resume => f.write_str("resuming the destination"),
        }
    }
}

/// Where the domain is after a failed migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aftermath {
    /// The source is as it was before (running, or paused if it was paused) and the
    /// destination has no domain, or never will run the one it has.
    SourceRestored,
    /// The destination removed its domain but resuming the source failed: the VM is
    /// paused on the source (or, if only the answer was lost, running there).
    SourcePaused,
    /// The destination was told to resume and could not confirm it removed its domain: the
    /// source is left paused so the VM cannot run twice. Someone must look.
    Unknown,
}

impl fmt::Display for Aftermath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aftermath::SourceRestored => "the VM stays on the source",
            Aftermath::SourcePaused => "the VM is paused on the source",
            Aftermath::Unknown => {
                "the source is paused and the destination may hold the VM; check before resuming"
            }
        })
    }
}

/// The receiving host as the sender sees it. Implemented in-process by [`LocalTarget`]
/// and by the daemon over HTTP(S) (one request per call, or one streamed body for the
/// `send` calls).
pub trait MigrationTarget {
    /// Creates the paused incoming domain.
    fn prepare(&mut self, spec: &DomainSpec) -> Result<(), XenError>;
    /// Carries the next chunk of the stream.
    fn send(&mut self, chunk: &[u8]) -> Result<(), XenError>;
    /// The stream is complete and the source paused: check the stream and run the domain.
    fn resume(&mut self) -> Result<(), XenError>;
    /// Removes the incoming domain. `Ok` only if it is certain not to run.
    fn abort(&mut self) -> Result<(), XenError>;
}

/// How far a migration got.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MigrationProgress {
    /// The round in progress.
    pub round: u32,
    /// Whether it is the stop-and-copy round.
    pub final_round: bool,
    /// Pages sent so far.
    pub pages_sent: u64,
    /// Stream bytes sent so far.
    pub bytes_sent: u64,
    /// An estimate of the fraction done, from 0 to 1, never decreasing.
    pub fraction: f64,
}

/// What [`migrate_domain`] reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MigrationEvent {
    /// A batch was sent.
    Progress(MigrationProgress),
    /// The source is paused: the guest stops running here.
    SourcePaused,
    /// The destination runs the guest.
    DestinationResumed,
}

/// What a successful migration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Rounds run, the stop-and-copy round included.
    pub rounds: u32,
    /// Pages in the guest.
    pub memory_pages: u64,
    /// Page records sent, all rounds.
    pub pages_sent: u64,
    /// Stream bytes sent, all rounds.
    pub bytes_sent: u64,
    /// Pages sent while the guest was paused.
    pub paused_pages: u64,
    /// Stream bytes sent while the guest was paused.
    pub paused_bytes: u64,
    /// Set when the source domain could not be removed after the destination resumed: it
    /// stays paused there, holding memory, and must be destroyed later.
    pub source_left_over: Option<String>,
}

struct Sender<'a> {
    source: &'a dyn Hypervisor,
    domid: DomId,
    target: &'a mut dyn MigrationTarget,
    policy: &'a PrecopyPolicy,
    observer: &'a mut dyn FnMut(&MigrationEvent) -> ControlFlow<()>,
    report: MigrationReport,
    buf: Vec<u8>,
    fraction: f64,
}

impl Sender<'_> {
    /// Sends one round's pages in batches, reporting progress after each.
    fn send_round(&mut self, round: u32, pages: &[u64], final_round: bool) -> Result<(), XenError> {
        let batch = self.policy.batch_pages.max(1);
        let mut done = 0usize;
        for chunk in pages.chunks(batch) {
            self.buf.clear();
            let buf = &mut self.buf;
            self.source
                .migration_read_pages(self.domid, chunk, &mut |index, data| {
                    stream::encode_page(buf, round, index, data);
                    Ok(())
                })?;
            self.target.send(&self.buf)?;
            done += chunk.len();
            self.report.pages_sent += chunk.len() as u64;
            self.report.bytes_sent += self.buf.len() as u64;
            if final_round {
                self.report.paused_pages += chunk.len() as u64;
                self.report.paused_bytes += self.buf.len() as u64;
            }
            // Live rounds fill the first 95%, the last round the rest: how many live rounds
            // remain is not known, only what is left of this one.
            let of_round = done as f64 / pages.len().max(1) as f64;
            let estimate = if final_round {
                0.95 + 0.05 * of_round
            } else {
                let sent = self.report.pages_sent as f64;
                let left = (pages.len() - done) as f64;
                0.95 * sent / (sent + left + 1.0)
            };
            self.fraction = self.fraction.max(estimate.min(1.0));
            let progress = MigrationProgress {
                round,
                final_round,
                pages_sent: self.report.pages_sent,
                bytes_sent: self.report.bytes_sent,
                fraction: self.fraction,
            };
            if (self.observer)(&MigrationEvent::Progress(progress)).is_break() {
                return Err(XenError::MigrationCancelled);
            }
        }
        Ok(())
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), XenError> {
        self.target.send(bytes)?;
        self.report.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// Undoes a migration that failed before the destination ran the domain (or that the
    /// destination says it did not run): the destination first, then the source, and the
    /// source only if the destination is sure not to run it.
    fn unwind(
        &mut self,
        step: MigrationStep,
        cause: XenError,
        resume_sent: bool,
        paused: bool,
    ) -> XenError {
        let target_gone = self.target.abort().is_ok();
        let aftermath = if resume_sent && !target_gone {
            Aftermath::Unknown
        } else {
            match self.source.migration_abort(self.domid) {
                Ok(()) => Aftermath::SourceRestored,
                // The guest was never paused: it runs on, only its dirty log stays on.
                Err(_) if !paused => Aftermath::SourceRestored,
                Err(_) => Aftermath::SourcePaused,
            }
        };
        XenError::MigrationFailed {
            step,
            aftermath,
            destination_left_over: !target_gone,
            cause: Box::new(cause),
        }
    }
}

fn merge_sorted(a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    let mut out = a;
    out.extend(b);
    out.sort_unstable();
    out.dedup();
    out
}

/// Moves a domain from `source` to `target` by pre-copy (see the [module docs](self)).
///
/// `observer` sees each batch, the pause and the resume; returning `Break` before the
/// destination resumed cancels the migration, which then fails with
/// [`XenError::MigrationCancelled`] as its cause and the source restored. On failure the
/// error is [`XenError::MigrationFailed`] (or the error of reading the domain, when nothing
/// was started) and its [`Aftermath`] says where the domain is.
pub fn migrate_domain(
    source: &dyn Hypervisor,
    domid: DomId,
    target: &mut dyn MigrationTarget,
    policy: &PrecopyPolicy,
    observer: &mut dyn FnMut(&MigrationEvent) -> ControlFlow<()>,
) -> Result<MigrationReport, XenError> {
    let info = source
        .list()?
        .into_iter()
        .find(|d| d.domid == domid)
        .ok_or(XenError::NoSuchDomain(domid))?;
    // A live migration hands over a running guest; the destination resumes what it gets.
    if info.state != DomainState::Running {
        return Err(XenError::InvalidState {
            domid,
            state: info.state,
            operation: "live-migrate",
        });
    }
    let spec = DomainSpec {
        uuid: info.uuid.clone(),
        name: info.name.clone(),
        memory: info.memory,
        vcpus: info.vcpus,
    };
    let mut s = Sender {
        source,
        domid,
        target,
        policy,
        observer,
        report: MigrationReport::default(),
        buf: Vec::with_capacity(policy.batch_pages.max(1) * stream::PAGE_RECORD_LEN),
        fraction: 0.0,
    };
    if let Err(e) = s.target.prepare(&spec) {
        // The incoming domain may exist if only the answer was lost; it never runs unless
        // told to resume, but it holds memory.
        let gone = s.target.abort().is_ok();
        return Err(XenError::MigrationFailed {
            step: MigrationStep::Prepare,
            aftermath: Aftermath::SourceRestored,
            destination_left_over: !gone,
            cause: Box::new(e),
        });
    }
    let memory_pages = match s.source.migration_begin(domid) {
        Ok(n) => n,
        Err(e) => {
            let gone = s.target.abort().is_ok();
            return Err(XenError::MigrationFailed {
                step: MigrationStep::Begin,
                aftermath: Aftermath::SourceRestored,
                destination_left_over: !gone,
                cause: Box::new(e),
            });
        }
    };
    s.report.memory_pages = memory_pages;

    // Live rounds.
    let mut header = Vec::new();
    stream::encode_header(
        &mut header,
        &StreamHeader {
            page_count: memory_pages,
        },
    );
    if let Err(e) = s.send_bytes(&header) {
        return Err(s.unwind(MigrationStep::Round(1), e, false, false));
    }
    let mut round = 1u32;
    let mut last_sent = 0u64;
    let pending = loop {
        let pages = match s.source.migration_dirty_pages(domid) {
            Ok(p) => p,
            Err(e) => return Err(s.unwind(MigrationStep::Round(round), e, false, false)),
        };
        let stats = RoundStats {
            round,
            to_send: pages.len() as u64,
            last_sent,
            total_sent: s.report.pages_sent,
            memory_pages,
        };
        if precopy_decision(policy, &stats) == Decision::StopAndCopy {
            break pages;
        }
        if let Err(e) = s.send_round(round, &pages, false) {
            return Err(s.unwind(MigrationStep::Round(round), e, false, false));
        }
        last_sent = pages.len() as u64;
        round += 1;
    };

    // Stop and copy.
    if let Err(e) = s.source.pause(domid) {
        // Only the answer may have been lost: count the guest as paused.
        return Err(s.unwind(MigrationStep::Pause, e, false, true));
    }
    // Cancelling is still possible here: the destination has not been told to resume.
    if (s.observer)(&MigrationEvent::SourcePaused).is_break() {
        return Err(s.unwind(
            MigrationStep::Pause,
            XenError::MigrationCancelled,
            false,
            true,
        ));
    }
    let last = match s.source.migration_dirty_pages(domid) {
        Ok(p) => merge_sorted(pending, p),
        Err(e) => return Err(s.unwind(MigrationStep::FinalRound, e, false, true)),
    };
    let mut end = Vec::new();
    let sent = s.send_round(round, &last, true).and_then(|()| {
        stream::encode_end(&mut end, round, s.report.pages_sent);
        s.send_bytes(&end)
    });
    if let Err(e) = sent {
        return Err(s.unwind(MigrationStep::FinalRound, e, false, true));
    }
    s.report.paused_bytes += end.len() as u64;
    s.report.rounds = round;

    // Hand over.
    if let Err(e) = s.target.resume() {
        return Err(s.unwind(MigrationStep::Resume, e, true, true));
    }
    let _ = (s.observer)(&MigrationEvent::DestinationResumed);
    if let Err(e) = s.source.migration_complete(domid) {
        // Paused, never resumed: holding memory is the whole harm.
        s.report.source_left_over = Some(e.to_string());
    }
    Ok(s.report)
}

/// The receiving side of a migration, for one incoming domain. Holds no reference to the
/// hypervisor, so a daemon can keep it between the HTTP requests of one migration.
#[derive(Debug)]
pub struct MigrationReceiver {
    domid: DomId,
    page_count: u64,
    decoder: Decoder,
    pages_written: u64,
}

impl MigrationReceiver {
    /// Creates the paused incoming domain for `spec`.
    pub fn prepare(hv: &dyn Hypervisor, spec: &DomainSpec) -> Result<MigrationReceiver, XenError> {
        let domid = hv.incoming_create(spec)?;
        Ok(MigrationReceiver {
            domid,
            page_count: spec.memory.div_ceil(PAGE_SIZE as u64),
            decoder: Decoder::new(),
            pages_written: 0,
        })
    }

    /// The incoming domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Page records written so far.
    pub fn pages_written(&self) -> u64 {
        self.pages_written
    }

    /// Takes the next chunk of the stream and writes the pages it completes.
    pub fn feed(&mut self, hv: &dyn Hypervisor, chunk: &[u8]) -> Result<(), XenError> {
        let (domid, expected) = (self.domid, self.page_count);
        let mut written = 0u64;
        let result = self.decoder.feed(chunk, &mut |record| {
            if let Record::Page { index, data, .. } = record {
                hv.incoming_write_page(domid, index, data)?;
                written += 1;
            }
            Ok(())
        });
        self.pages_written += written;
        result?;
        // Pages past the incoming domain are refused as they come; a stream for a smaller
        // guest would leave pages unwritten, so the sizes must agree.
        match self.decoder.header() {
            Some(h) if h.page_count != expected => Err(XenError::MigrationStream {
                offset: 0,
                reason: format!(
                    "the stream is for {} pages, the incoming domain has {expected}",
                    h.page_count
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The stream is complete: checks it ended properly and lets the domain run.
    pub fn finish(&mut self, hv: &dyn Hypervisor) -> Result<DomId, XenError> {
        self.decoder.finish()?;
        hv.incoming_finish(self.domid)?;
        Ok(self.domid)
    }

    /// Removes the incoming domain of the VM `uuid`, for when `prepare` failed and its domain
    /// id is unknown: the domain may have been created with only the answer lost. Within a
    /// pool a VM never migrates to the host it runs on, so a domain of that VM on the
    /// receiving host can only be the incoming one.
    pub fn abort_by_uuid(hv: &dyn Hypervisor, uuid: &str) -> Result<(), XenError> {
        match hv.domain_by_uuid(uuid)? {
            Some(d) => match hv.destroy(d.domid) {
                Ok(()) | Err(XenError::NoSuchDomain(_)) => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }

    /// Removes the incoming domain.
    pub fn abort(&mut self, hv: &dyn Hypervisor) -> Result<(), XenError> {
        match hv.destroy(self.domid) {
            Ok(()) | Err(XenError::NoSuchDomain(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A [`MigrationTarget`] in the same process: the stream goes straight into a
/// [`MigrationReceiver`] on another hypervisor.
pub struct LocalTarget<'h> {
    hv: &'h dyn Hypervisor,
    receiver: Option<MigrationReceiver>,
    /// The VM being received, known from `prepare` on even if creating its domain failed.
    uuid: Option<String>,
}

impl fmt::Debug for LocalTarget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalTarget")
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl<'h> LocalTarget<'h> {
    /// A target that receives on `hv`.
    pub fn new(hv: &'h dyn Hypervisor) -> Self {
        LocalTarget {
            hv,
            receiver: None,
            uuid: None,
        }
    }

    /// The incoming domain, once prepared.
    pub fn domid(&self) -> Option<DomId> {
        self.receiver.as_ref().map(MigrationReceiver::domid)
    }
}

fn not_prepared() -> XenError {
    XenError::MigrationStream {
        offset: 0,
        reason: "no incoming domain was prepared".into(),
    }
}

impl MigrationTarget for LocalTarget<'_> {
    fn prepare(&mut self, spec: &DomainSpec) -> Result<(), XenError> {
        self.uuid = Some(spec.uuid.clone());
        self.receiver = Some(MigrationReceiver::prepare(self.hv, spec)?);
        Ok(())
    }

    fn send(&mut self, chunk: &[u8]) -> Result<(), XenError> {
        let hv = self.hv;
        self.receiver
            .as_mut()
            .ok_or_else(not_prepared)?
            .feed(hv, chunk)
    }

    fn resume(&mut self) -> Result<(), XenError> {
        let hv = self.hv;
        self.receiver
            .as_mut()
            .ok_or_else(not_prepared)?
            .finish(hv)
            .map(|_| ())
    }

    fn abort(&mut self) -> Result<(), XenError> {
        let hv = self.hv;
        match (self.receiver.as_mut(), &self.uuid) {
            (Some(r), _) => r.abort(hv),
            (None, Some(uuid)) => MigrationReceiver::abort_by_uuid(hv, uuid),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats(round: u32, to_send: u64, last_sent: u64, total_sent: u64) -> RoundStats {
        RoundStats {
            round,
            to_send,
            last_sent,
            total_sent,
            memory_pages: 10_000,
        }
    }

    #[test]
    fn the_policy_stops_for_each_of_its_reasons() {
        let p = PrecopyPolicy {
            max_rounds: 5,
            dirty_threshold_pages: 100,
            max_sent_factor: 2,
            stop_when_not_shrinking: true,
            batch_pages: 64,
        };
        use Decision::{Continue, StopAndCopy};
        assert_eq!(precopy_decision(&p, &stats(1, 8_000, 0, 0)), Continue);
        assert_eq!(
            precopy_decision(&p, &stats(2, 3_000, 8_000, 8_000)),
            Continue
        );
        // Little left.
        assert_eq!(precopy_decision(&p, &stats(1, 100, 0, 0)), StopAndCopy);
        assert_eq!(
            precopy_decision(&p, &stats(3, 100, 500, 9_000)),
            StopAndCopy
        );
        // Round limit: five live rounds, then stop.
        assert_eq!(precopy_decision(&p, &stats(5, 400, 500, 9_000)), Continue);
        assert_eq!(
            precopy_decision(&p, &stats(6, 300, 400, 9_400)),
            StopAndCopy
        );
        // Budget: twice the guest at most.
        assert_eq!(
            precopy_decision(&p, &stats(3, 2_000, 3_000, 18_500)),
            StopAndCopy
        );
        // Not shrinking (the second round is always compared with a full copy, so exempt).
        assert_eq!(
            precopy_decision(&p, &stats(3, 3_000, 3_000, 11_000)),
            StopAndCopy
        );
        let patient = PrecopyPolicy {
            stop_when_not_shrinking: false,
            ..p
        };
        assert_eq!(
            precopy_decision(&patient, &stats(3, 3_000, 3_000, 11_000)),
            Continue
        );
    }

    proptest! {
        /// Pre-copy always ends: past the round limit the answer is to stop.
        #[test]
        fn the_policy_always_ends(
            max_rounds in 0u32..50, threshold in 0u64..1000, factor in 0u64..10,
            shrink in any::<bool>(), to_send in any::<u64>(), last in any::<u64>(),
            total in any::<u64>(), memory in any::<u64>(),
        ) {
            let p = PrecopyPolicy {
                max_rounds,
                dirty_threshold_pages: threshold,
                max_sent_factor: factor,
                stop_when_not_shrinking: shrink,
                batch_pages: 1,
            };
            let s = RoundStats {
                round: max_rounds + 1,
                to_send,
                last_sent: last,
                total_sent: total,
                memory_pages: memory,
            };
            prop_assert_eq!(precopy_decision(&p, &s), Decision::StopAndCopy);
        }
    }
}
