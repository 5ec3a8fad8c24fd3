//! Bringing a returning host's mirrors back in sync.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use super::extents::DirtyMap;
use super::{is_location, lock, AlsSr, Mirror};
use crate::StorageError;

/// How much one [`Resync::step`] copies at most by default.
pub const DEFAULT_RESYNC_CHUNK: u64 = 4 << 20;

/// Where a [`Resync`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    /// Bytes copied (or found no longer needed) so far.
    pub done_bytes: u64,
    /// Bytes the host's dirty maps held when the resync started.
    pub total_bytes: u64,
    /// Every mirror of the host is in sync.
    pub complete: bool,
}

impl ResyncProgress {
    /// The fraction done, from 0 to 1; 1 when there was nothing to copy.
    pub fn fraction(&self) -> f64 {
        if self.complete || self.total_bytes == 0 {
            1.0
        } else {
            // Byte counts of disks fit a double's mantissa to well under a byte per TiB.
            (self.done_bytes as f64 / self.total_bytes as f64).min(1.0)
        }
    }
}

/// A resynchronisation of one host's mirrors: copies each VDI's dirty ranges from an in-sync
/// mirror, a chunk per [`Resync::step`], removing each from the dirty map on disk once the
/// host has made it durable. While it lives, writes go to the host's mirrors too.
///
/// Dropping it cancels it: what was copied stays copied, the rest stays in the dirty maps,
/// and a later [`AlsSr::start_resync`] resumes from there. It fails with
/// [`StorageError::ResyncInterrupted`] when the host goes away again (a write to it failed,
/// or [`AlsSr::mark_absent`]); start another when it is back.
#[derive(Debug)]
pub struct Resync {
    sr: AlsSr,
    host: usize,
    job: u64,
    /// VDIs left to finish, in location order.
    queue: VecDeque<String>,
    done: u64,
    total: u64,
    chunk: u64,
}

impl Resync {
    pub(super) fn start(sr: AlsSr, host: &str) -> Result<Self, StorageError> {
        let inner = sr.inner.clone();
        let host = inner.host_index(host)?;
        let target = inner.mirrors[host].clone();
        let job = inner.next_job.fetch_add(1, Ordering::Relaxed);
        let mut resync = Resync {
            sr,
            host,
            job,
            queue: VecDeque::new(),
            done: 0,
            total: 0,
            chunk: DEFAULT_RESYNC_CHUNK,
        };
        // Creates and destroys wait while the host's images are matched against the VDIs.
        let vdis = lock(&inner.vdis);
        for location in target.list()? {
            if is_location(&location) && !vdis.contains_key(&location) {
                target.remove(&location)?;
            }
        }
        for (location, vdi) in vdis.iter() {
            let mut v = lock(vdi);
            let size = v.meta.virtual_size;
            let path = inner.dirty_path(location, host);
            let Mirror::Stale { map, job: running } = &mut v.mirrors[host] else {
                continue;
            };
            if running.is_some() {
                return Err(StorageError::ResyncInProgress {
                    host: target.host().to_string(),
                });
            }
            if map.missing {
                target.create(location, size)?;
                let next = DirtyMap {
                    missing: false,
                    fresh: true,
                    extents: map.extents.clone(),
                };
                next.store(&path)?;
                *map = next;
            } else {
                // The VDI may have grown while the host was away.
                match target.set_len(location, size) {
                    Ok(()) => {}
                    // The host came back without the image (its disk was replaced): it gets
                    // a new one and all of the data.
                    Err(StorageError::NoSuchVdi(_)) => {
                        target.create(location, size)?;
                        let mut next = DirtyMap {
                            missing: false,
                            fresh: true,
                            ..DirtyMap::default()
                        };
                        next.extents.insert(0, size);
                        next.store(&path)?;
                        *map = next;
                    }
                    Err(e) => return Err(e),
                }
            }
            *running = Some(job);
            resync.total += map.extents.len_bytes();
            // Pushed only once marked, so that dropping `resync` on an error below unmarks
            // exactly what was marked.
            resync.queue.push_back(location.clone());
        }
        drop(vdis);
        Ok(resync)
    }

    /// The host being resynchronised.
    pub fn host(&self) -> &str {
        self.sr.inner.mirrors[self.host].host()
    }

    /// Sets how much one [`Resync::step`] copies at most (at least one byte).
    pub fn set_chunk(&mut self, bytes: u64) {
        self.chunk = bytes.max(1);
    }

    /// Where the resync stands.
    pub fn progress(&self) -> ResyncProgress {
        ResyncProgress {
            done_bytes: self.done,
            total_bytes: self.total,
            complete: self.queue.is_empty(),
        }
    }

    /// Copies one chunk, or marks one VDI's mirror in sync when nothing is left of its map.
    pub fn step(&mut self) -> Result<ResyncProgress, StorageError> {
        let inner = self.sr.inner.clone();
        let target = inner.mirrors[self.host].clone();
        let Some(location) = self.queue.front().cloned() else {
            return Ok(self.progress());
        };
        let vdi = match inner.vdi(&location) {
            Ok(v) => v,
            // Destroyed meanwhile: nothing left to copy for it.
            Err(StorageError::NoSuchVdi(_)) => {
                self.queue.pop_front();
                return Ok(self.progress());
            }
            Err(e) => return Err(e),
        };
        let mut v = lock(&vdi);
        let size = v.meta.virtual_size;
        let path = inner.dirty_path(&location, self.host);
        let map = match &v.mirrors[self.host] {
            Mirror::Stale { map, job } if *job == Some(self.job) => map.clone(),
            Mirror::InSync => {
                self.queue.pop_front();
                return Ok(self.progress());
            }
            Mirror::Stale { .. } => {
                return Err(StorageError::ResyncInterrupted {
                    host: target.host().to_string(),
                    location,
                })
            }
        };
        let Some((start, end)) = map.extents.first() else {
            // Whatever happened to its length meanwhile, an in-sync image is as long as the
            // VDI.
            if let Err(e) = target
                .set_len(&location, size)
                .and_then(|()| target.flush(&location))
            {
                if let Mirror::Stale { job, .. } = &mut v.mirrors[self.host] {
                    *job = None;
                }
                return Err(e);
            }
            DirtyMap::remove(&path)?;
            v.mirrors[self.host] = Mirror::InSync;
            self.queue.pop_front();
            return Ok(self.progress());
        };
        let end = end.min(start.saturating_add(self.chunk));
        let copy_end = end.min(size);
        if start < copy_end {
            let len = usize::try_from(copy_end - start).map_err(|_| StorageError::OutOfRange {
                what: "resync chunk",
                value: copy_end - start,
            })?;
            let mut buf = vec![0u8; len];
            inner.read_in_sync(&v, start, &mut buf)?;
            // A fresh image reads as zeros wherever nothing was written through to it, and
            // what was written through is what the in-sync copies hold: its zero blocks
            // need no copy.
            let bs = usize::try_from(inner.block_size).unwrap_or(usize::MAX);
            let mut written = Ok(());
            for (at, run) in data_runs(&buf, if map.fresh { bs } else { 0 }) {
                written = target.write_at(&location, start + at as u64, run);
                if written.is_err() {
                    break;
                }
            }
            if let Err(e) = written.and_then(|()| target.flush(&location)) {
                inner.not_fresh(&mut v, self.host)?;
                if let Mirror::Stale { job, .. } = &mut v.mirrors[self.host] {
                    *job = None;
                }
                return Err(e);
            }
        }
        let mut next = map;
        next.extents.remove(start, end);
        next.store(&path)?;
        v.mirrors[self.host] = Mirror::Stale {
            map: next,
            job: Some(self.job),
        };
        self.done += end - start;
        Ok(self.progress())
    }

    /// Steps until every mirror of the host is in sync or `cancel` is set, reporting the
    /// progress after each step. Returns whether it completed; a cancelled resync resumes
    /// from where it stopped when started again.
    pub fn run(
        &mut self,
        cancel: &AtomicBool,
        mut on_progress: impl FnMut(ResyncProgress),
    ) -> Result<bool, StorageError> {
        loop {
            if self.queue.is_empty() {
                return Ok(true);
            }
            if cancel.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let p = self.step()?;
            on_progress(p);
        }
    }
}

/// The runs of `buf` to write, with their offsets: all of it when `block` is 0, else the
/// runs of blocks of `block` bytes that hold a non-zero byte.
pub(super) fn data_runs(buf: &[u8], block: usize) -> Vec<(usize, &[u8])> {
    if block == 0 {
        return vec![(0, buf)];
    }
    let mut runs = Vec::new();
    let mut run_start = None;
    for (i, b) in buf.chunks(block).enumerate() {
        let at = i * block;
        match (b.iter().any(|x| *x != 0), run_start) {
            (true, None) => run_start = Some(at),
            (false, Some(s)) => {
                runs.push((s, &buf[s..at]));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        runs.push((s, &buf[s..]));
    }
    runs
}

impl Drop for Resync {
    fn drop(&mut self) {
        // The mirrors not finished stop receiving writes; their maps are on disk already.
        for location in &self.queue {
            if let Ok(vdi) = self.sr.inner.vdi(location) {
                if let Mirror::Stale { job, .. } = &mut lock(&vdi).mirrors[self.host] {
                    if *job == Some(self.job) {
                        *job = None;
                    }
                }
            }
        }
    }
}
