//! The statefile, worked from threads of its own so that a hung SR never blocks the loop.
//!
//! One thread writes this host's slot, another reads every slot; each is given at most one
//! operation at a time. An operation that has not completed within one interval counts as
//! failed; while it is stuck, further requests of its kind fail at once, and only the
//! latest is kept to run once the thread is free. A write's success is reported only for
//! the latest write asked for (an older write landing is not the slot the machine now
//! wants on disk), and a read that was already reported failed is dropped (its slots are
//! old news). The statefile is opened afresh for every operation: a host that lost its SR
//! must see the failure, not keep writing through a descriptor to a file that is gone.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use xenpool_core::error::chain;
use xenpool_ha::{wire, Input, Slot};
use xenpool_storage::statefile::MAX_PAYLOAD;
use xenpool_storage::{SlotRead, Statefile};

use crate::fence::Alive;
use crate::HadError;

const _: () = assert!(wire::SLOT_LEN <= MAX_PAYLOAD);

/// A job queued before a freeze and picked up after the deadline is not done.
const PAST_DEADLINE: &str = "past the watchdog deadline";

/// What a statefile thread reports.
#[derive(Debug)]
pub enum Done {
    /// The own slot was written, or not.
    Written(Result<(), String>),
    /// Every slot, decoded for this arming (`None`: empty, corrupt or another arming's).
    Read(Result<Vec<Option<Slot>>, String>),
    /// `<statefile>.superseded` exists: this arming is over.
    Superseded,
}

/// Where this host's slots are.
#[derive(Debug, Clone)]
struct Target {
    path: PathBuf,
    superseded: PathBuf,
    generation: [u8; 16],
    index: u16,
    hosts: usize,
    alive: Alive,
}

impl Target {
    fn open(&self) -> Result<Statefile, String> {
        let f = Statefile::open(&self.path).map_err(|e| chain(&e))?;
        if f.generation() != self.generation {
            return Err(format!("{} belongs to another arming", self.path.display()));
        }
        Ok(f)
    }

    fn write(&self, slot: &Slot) -> Done {
        if !self.alive.check() {
            return Done::Written(Err(PAST_DEADLINE.into()));
        }
        if self.superseded.exists() {
            return Done::Superseded;
        }
        let payload = wire::encode_slot(&self.generation, slot);
        Done::Written(self.open().and_then(|f| {
            f.write_slot(self.index, slot.seq, &payload)
                .map_err(|e| chain(&e))
        }))
    }

    fn read(&self) -> Done {
        if !self.alive.check() {
            return Done::Read(Err(PAST_DEADLINE.into()));
        }
        if self.superseded.exists() {
            return Done::Superseded;
        }
        Done::Read(self.open().and_then(|f| {
            let slots = f.read_all().map_err(|e| chain(&e))?;
            Ok((0..self.hosts)
                .map(|i| match slots.get(i) {
                    Some(SlotRead::Written(s)) => wire::decode_slot(&self.generation, &s.payload),
                    _ => None,
                })
                .collect())
        }))
    }
}

fn worker<J: Send + 'static>(
    name: &str,
    work: impl Fn(J) -> Done + Send + 'static,
    done: UnboundedSender<Done>,
) -> Result<mpsc::Sender<J>, HadError> {
    let (tx, rx) = mpsc::channel::<J>();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                if done.send(work(job)).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| HadError::Setup {
            context: "starting a statefile thread",
            source,
        })?;
    Ok(tx)
}

#[derive(Debug, Clone, Copy)]
struct Busy {
    since: Duration,
    /// Already reported failed for taking too long.
    late: bool,
}

/// One kind of operation: at most one on its thread, the latest request kept.
#[derive(Debug)]
struct Lane<J> {
    jobs: mpsc::Sender<J>,
    busy: Option<Busy>,
    next: Option<J>,
    /// The last error logged, so a lasting failure is logged once.
    error: Option<String>,
    what: &'static str,
}

impl<J> Lane<J> {
    fn submit(&mut self, now: Duration, job: J) -> bool {
        if self.jobs.send(job).is_ok() {
            self.busy = Some(Busy {
                since: now,
                late: false,
            });
            true
        } else {
            self.note(Err("the statefile thread is gone".into()));
            false
        }
    }

    /// Asks for `job`: `Some(false)` is a failure to report now, `None` an answer to come.
    fn request(&mut self, now: Duration, job: J) -> Option<bool> {
        match self.busy {
            None => (!self.submit(now, job)).then_some(false),
            Some(b) => {
                self.next = Some(job);
                b.late.then_some(false)
            }
        }
    }

    fn expire(&mut self, now: Duration, timeout: Duration) -> bool {
        match &mut self.busy {
            Some(b) if !b.late && now >= b.since + timeout => {
                b.late = true;
                self.note(Err(format!("no answer within {timeout:?}")));
                true
            }
            _ => false,
        }
    }

    fn note(&mut self, r: Result<(), String>) {
        match (r, &self.error) {
            (Ok(()), Some(_)) => {
                tracing::info!(operation = self.what, "the statefile answers again");
                self.error = None;
            }
            (Err(e), last) if last.as_ref() != Some(&e) => {
                tracing::warn!(operation = self.what, error = %e, "statefile operation failed");
                self.error = Some(e);
            }
            _ => {}
        }
    }
}

/// The statefile as the loop sees it.
#[derive(Debug)]
pub struct StatefileIo {
    writes: Lane<Slot>,
    reads: Lane<()>,
    timeout: Duration,
}

impl StatefileIo {
    /// Starts the threads for host `index` of `hosts`, reaching the statefile at `path`;
    /// operations not done within `timeout` count as failed. Results go to `done`, to be
    /// passed back to [`StatefileIo::done`].
    pub fn start(
        path: &Path,
        generation: [u8; 16],
        index: usize,
        hosts: usize,
        timeout: Duration,
        alive: Alive,
        done: UnboundedSender<Done>,
    ) -> Result<StatefileIo, HadError> {
        let index = u16::try_from(index)
            .map_err(|_| HadError::InvalidConfig(format!("host index {index}")))?;
        let mut superseded = path.as_os_str().to_owned();
        superseded.push(".superseded");
        let target = Target {
            path: path.to_path_buf(),
            superseded: PathBuf::from(superseded),
            generation,
            index,
            hosts,
            alive,
        };
        let t = target.clone();
        let writes = worker("statefile-write", move |s: Slot| t.write(&s), done.clone())?;
        let reads = worker("statefile-read", move |()| target.read(), done)?;
        Ok(StatefileIo {
            writes: Lane {
                jobs: writes,
                busy: None,
                next: None,
                error: None,
                what: "write",
            },
            reads: Lane {
                jobs: reads,
                busy: None,
                next: None,
                error: None,
                what: "read",
            },
            timeout,
        })
    }

    /// [`xenpool_ha::Action::WriteSlot`]; an input to feed now if it fails at once.
    pub fn write(&mut self, now: Duration, slot: Slot) -> Option<Input> {
        self.writes
            .request(now, slot)
            .map(|ok| Input::SlotWritten { ok })
    }

    /// [`xenpool_ha::Action::ReadStatefile`]; an input to feed now if it fails at once.
    pub fn read(&mut self, now: Duration) -> Option<Input> {
        self.reads
            .request(now, ())
            .map(|_| Input::StatefileReadFailed)
    }

    /// A thread's result ([`Done::Superseded`] is the caller's business), as the input to
    /// feed, if any.
    pub fn done(&mut self, now: Duration, done: Done) -> Option<Input> {
        match done {
            Done::Written(r) => {
                let late = self.writes.busy.take().is_some_and(|b| b.late);
                self.writes.note(r.clone());
                if let Some(next) = self.writes.next.take() {
                    // A newer slot is wanted: this result is not about it.
                    return (!self.writes.submit(now, next))
                        .then_some(Input::SlotWritten { ok: false });
                }
                (!late || r.is_ok()).then_some(Input::SlotWritten { ok: r.is_ok() })
            }
            Done::Read(r) => {
                let late = self.reads.busy.take().is_some_and(|b| b.late);
                self.reads
                    .note(r.as_ref().map(|_| ()).map_err(Clone::clone));
                let out = (!late).then_some(match r {
                    Ok(slots) => Input::StatefileRead(slots),
                    Err(_) => Input::StatefileReadFailed,
                });
                if self.reads.next.take().is_some() && !self.reads.submit(now, ()) {
                    return out.or(Some(Input::StatefileReadFailed));
                }
                out
            }
            Done::Superseded => None,
        }
    }

    /// Operations that have just taken too long, as failures to feed.
    pub fn expire(&mut self, now: Duration) -> Vec<Input> {
        let mut out = Vec::new();
        if self.writes.expire(now, self.timeout) {
            out.push(Input::SlotWritten { ok: false });
        }
        if self.reads.expire(now, self.timeout) {
            out.push(Input::StatefileReadFailed);
        }
        out
    }

    /// When the next operation in flight times out, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        [self.writes.busy, self.reads.busy]
            .into_iter()
            .flatten()
            .filter(|b| !b.late)
            .map(|b| b.since + self.timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use xenpool_ha::HostSet;

    const GEN: [u8; 16] = [7; 16];
    const I: Duration = Duration::from_millis(250);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn slot(seq: u64) -> Slot {
        Slot {
            seq,
            epoch: 0,
            liveset: HostSet::first(3),
            claim: None,
        }
    }

    fn alive() -> Alive {
        Alive::for_tests(Arc::new(AtomicU64::new(u64::MAX)))
    }

    fn lane<J>(what: &'static str) -> (Lane<J>, mpsc::Receiver<J>) {
        let (jobs, rx) = mpsc::channel();
        let lane = Lane {
            jobs,
            busy: None,
            next: None,
            error: None,
            what,
        };
        (lane, rx)
    }

    /// Threads that take jobs and never answer: a hung SR.
    fn stuck() -> (StatefileIo, mpsc::Receiver<Slot>, mpsc::Receiver<()>) {
        let (writes, w) = lane("write");
        let (reads, r) = lane("read");
        let io = StatefileIo {
            writes,
            reads,
            timeout: I,
        };
        (io, w, r)
    }

    #[test]
    fn a_hung_statefile_fails_after_an_interval_and_queues_nothing_behind() {
        let (mut io, w, r) = stuck();
        assert_eq!(io.write(ms(0), slot(1)), None);
        assert_eq!(io.read(ms(0)), None);
        assert_eq!(io.next_deadline(), Some(I));
        assert!(io.expire(ms(100)).is_empty());
        assert_eq!(
            io.expire(I),
            vec![Input::SlotWritten { ok: false }, Input::StatefileReadFailed]
        );
        assert_eq!(io.next_deadline(), None);
        // Still stuck: later requests fail at once, and only the latest waits.
        assert_eq!(
            io.write(ms(300), slot(2)),
            Some(Input::SlotWritten { ok: false })
        );
        assert_eq!(
            io.write(ms(550), slot(3)),
            Some(Input::SlotWritten { ok: false })
        );
        assert_eq!(io.read(ms(300)), Some(Input::StatefileReadFailed));
        assert_eq!(w.try_iter().count(), 1);
        assert_eq!(r.try_iter().count(), 1);
        // The stuck write lands: the latest slot is written next, and only its result
        // is reported.
        assert_eq!(io.done(ms(900), Done::Written(Ok(()))), None);
        assert_eq!(w.try_recv().map(|s| s.seq), Ok(3));
        assert_eq!(
            io.done(ms(950), Done::Written(Ok(()))),
            Some(Input::SlotWritten { ok: true })
        );
        // The stuck read's slots are old news: dropped; a fresh read follows.
        let late = Done::Read(Ok(vec![None; 3]));
        assert_eq!(io.done(ms(900), late), None);
        assert_eq!(r.try_iter().count(), 1);
        assert_eq!(
            io.done(ms(920), Done::Read(Ok(vec![None; 3]))),
            Some(Input::StatefileRead(vec![None; 3]))
        );
    }

    #[test]
    fn a_write_in_time_answers_only_for_the_latest_slot() {
        let (mut io, w, _r) = stuck();
        assert_eq!(io.write(ms(0), slot(1)), None);
        assert_eq!(io.write(ms(10), slot(2)), None);
        // The first write's success says nothing about slot 2 (it might carry a claim).
        assert_eq!(io.done(ms(20), Done::Written(Ok(()))), None);
        let seqs: Vec<u64> = w.try_iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(
            io.done(ms(30), Done::Written(Err("disk".into()))),
            Some(Input::SlotWritten { ok: false })
        );
    }

    #[test]
    fn slots_round_trip_and_other_armings_or_a_missing_file_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statefile");
        let target = |generation| Target {
            path: path.clone(),
            superseded: dir.path().join("statefile.superseded"),
            generation,
            index: 1,
            hosts: 3,
            alive: alive(),
        };
        assert!(matches!(target(GEN).read(), Done::Read(Err(_))));
        assert!(matches!(target(GEN).write(&slot(1)), Done::Written(Err(_))));
        Statefile::create(&path, GEN, 3).unwrap();
        assert!(matches!(target(GEN).write(&slot(5)), Done::Written(Ok(()))));
        match target(GEN).read() {
            Done::Read(Ok(slots)) => assert_eq!(slots, vec![None, Some(slot(5)), None]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(target([8; 16]).read(), Done::Read(Err(_))));
        assert!(matches!(
            target([8; 16]).write(&slot(6)),
            Done::Written(Err(_))
        ));
        std::fs::write(dir.path().join("statefile.superseded"), b"").unwrap();
        assert!(matches!(target(GEN).read(), Done::Superseded));
        assert!(matches!(target(GEN).write(&slot(7)), Done::Superseded));
    }

    #[test]
    fn nothing_is_done_past_the_watchdog_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("statefile");
        Statefile::create(&path, GEN, 3).unwrap();
        let t = Target {
            path,
            superseded: dir.path().join("statefile.superseded"),
            generation: GEN,
            index: 0,
            hosts: 3,
            alive: Alive::for_tests(Arc::new(AtomicU64::new(0))),
        };
        assert!(matches!(t.write(&slot(1)), Done::Written(Err(_))));
        let f = Statefile::open(dir.path().join("statefile")).unwrap();
        assert_eq!(f.read_slot(0).unwrap(), SlotRead::Empty);
    }
}
