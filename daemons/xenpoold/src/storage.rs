//! Storage work on the host that reaches the storage: plugging and unplugging directory
//! SRs (with the pool's claim on shared ones), VDI files, scans, and the memory image of a
//! checkpoint. The coordinator picks the host through [`Node::sr_site`] and sends it an
//! [`SrWork`]; a member receives it as `host.xenpool_sr_work`.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xenpool_core::{PbdRecord, PoolRecord, Ref, SrRecord};
use xenpool_rpc::{Value as Wire, XenApiError};
use xenpool_storage::{SharedDirSr, SrDriver, SrUsage, StorageError, VdiInfo};
use xenpool_xen::{DomainState, Hypervisor};

use crate::node::Node;

/// The directory drivers, by how many hosts see the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirKind {
    /// One host's directory ([`xenpool_storage::LocalDirSr`]).
    Local,
    /// A directory every host mounts ([`SharedDirSr`]), claimed by one pool.
    Shared,
}

/// SR types served by the directory drivers. `shared_dir` is the type the first host of a
/// pool gives its shared SR.
pub fn dir_kind(sr: &SrRecord) -> Option<DirKind> {
    match sr.r#type.to_ascii_lowercase().as_str() {
        "dir" => Some(DirKind::Local),
        "shared-dir" | "shared_dir" => Some(DirKind::Shared),
        _ => None,
    }
}

/// An SR as the host doing the work reaches it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SrPlace {
    /// The driver.
    pub kind: DirKind,
    /// The directory on that host (`PBD.device_config["location"]`).
    pub location: String,
}

/// One piece of storage work for a host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SrWork {
    /// Makes the directory usable; a shared one is claimed for `pool`.
    Plug {
        /// The SR.
        sr: SrPlace,
        /// The pool's UUID.
        pool: String,
    },
    /// Stops using the directory; `release` gives up the pool's claim.
    Unplug {
        /// The SR.
        sr: SrPlace,
        /// The pool's UUID.
        pool: String,
        /// Whether no other host of the pool still uses it.
        release: bool,
    },
    /// Removes the SR's files and the pool's claim (the SR holds no VDI records).
    Destroy {
        /// The SR.
        sr: SrPlace,
        /// The pool's UUID.
        pool: String,
    },
    /// Every VDI and the space used.
    Scan {
        /// The SR.
        sr: SrPlace,
    },
    /// A new VDI.
    VdiCreate {
        /// The SR.
        sr: SrPlace,
        /// Its name.
        name: String,
        /// Its size, bytes.
        size: u64,
    },
    /// Removes a VDI.
    VdiDestroy {
        /// The SR.
        sr: SrPlace,
        /// The VDI.
        location: String,
    },
    /// A copy of a VDI on the same SR.
    VdiClone {
        /// The SR.
        sr: SrPlace,
        /// The VDI.
        location: String,
        /// The copy's name.
        name: String,
    },
    /// A copy of a VDI on another SR this host reaches.
    VdiCopy {
        /// The source SR.
        from: SrPlace,
        /// The VDI.
        location: String,
        /// The target SR.
        to: SrPlace,
        /// The copy's name.
        name: String,
    },
    /// Describes a VDI.
    VdiStat {
        /// The SR.
        sr: SrPlace,
        /// The VDI.
        location: String,
    },
    /// Grows a VDI.
    VdiResize {
        /// The SR.
        sr: SrPlace,
        /// The VDI.
        location: String,
        /// The new size, bytes.
        size: u64,
    },
    /// Pauses the VM's running domain and writes its memory image to a new VDI; the
    /// domain stays paused until [`SrWork::Unpause`].
    MemoryImage {
        /// The VM.
        vm_uuid: String,
        /// The SR of the image.
        sr: SrPlace,
        /// The image VDI's name.
        name: String,
    },
    /// Lets a domain paused by [`SrWork::MemoryImage`] run again.
    Unpause {
        /// The VM.
        vm_uuid: String,
    },
}

/// What storage work reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SrDone {
    /// The VDI made or changed.
    pub vdi: Option<VdiInfo>,
    /// Every VDI (a scan).
    pub vdis: Vec<VdiInfo>,
    /// Space on the SR.
    pub usage: Option<SrUsage>,
    /// A domain was paused for a memory image.
    pub paused: bool,
}

/// A driver's failure in XenAPI form: SM failures reach xapi's clients as
/// `SR_BACKEND_FAILURE` with the readable message second, so that is how ours travel too.
pub fn storage_error(e: StorageError) -> XenApiError {
    match e {
        StorageError::NoSuchVdi(location) => XenApiError::new("VDI_MISSING", ["", &location]),
        // Another pool's claim: xapi has no code of its own for it; an SM refusing to attach
        // storage another pool uses answers SR_BACKEND_FAILURE.
        StorageError::ClaimedByOtherPool { holder } => XenApiError::new(
            "SR_BACKEND_FAILURE",
            [
                String::new(),
                format!(
                    "the SR is in use by another pool ({holder}); a shared SR serves one pool \
                     only"
                ),
                String::new(),
            ],
        ),
        other => XenApiError::new(
            "SR_BACKEND_FAILURE",
            [
                String::new(),
                xenpool_core::error::chain(&other),
                String::new(),
            ],
        ),
    }
}

fn internal(e: impl std::fmt::Display) -> XenApiError {
    XenApiError::internal_error(e.to_string())
}

/// The driver of an SR at its place on this host.
pub fn open_driver(place: &SrPlace) -> Result<Box<dyn SrDriver>, XenApiError> {
    if place.location.is_empty() {
        return Err(XenApiError::new(
            "SR_BACKEND_FAILURE",
            ["", "device_config has no location", ""],
        ));
    }
    Ok(match place.kind {
        DirKind::Local => {
            Box::new(xenpool_storage::LocalDirSr::open(&place.location).map_err(storage_error)?)
        }
        DirKind::Shared => Box::new(SharedDirSr::open(&place.location).map_err(storage_error)?),
    })
}

fn one(vdi: VdiInfo) -> SrDone {
    SrDone {
        vdi: Some(vdi),
        ..Default::default()
    }
}

/// Does `work` on this host. Blocking.
pub fn run(hv: &dyn Hypervisor, work: SrWork) -> Result<SrDone, XenApiError> {
    let se = storage_error;
    match work {
        SrWork::Plug { sr, pool } => {
            let driver = open_driver(&sr)?;
            if sr.kind == DirKind::Shared {
                SharedDirSr::open(&sr.location)
                    .and_then(|s| s.claim(&pool))
                    .map_err(se)?;
            }
            Ok(SrDone {
                usage: Some(driver.usage().map_err(se)?),
                ..Default::default()
            })
        }
        SrWork::Unplug { sr, pool, release } => {
            if sr.kind == DirKind::Shared && release && !sr.location.is_empty() {
                SharedDirSr::open(&sr.location)
                    .and_then(|s| s.release(&pool))
                    .map_err(se)?;
            }
            Ok(SrDone::default())
        }
        SrWork::Destroy { sr, pool } => {
            let driver = open_driver(&sr)?;
            // Unplugged, the SR may have been taken by another pool since: its disks are
            // not ours to remove. Holding the claim while deleting keeps it that way.
            if sr.kind == DirKind::Shared {
                SharedDirSr::open(&sr.location)
                    .and_then(|s| s.claim(&pool))
                    .map_err(se)?;
            }
            for v in driver.list().map_err(se)? {
                driver.destroy(&v.location).map_err(se)?;
            }
            if sr.kind == DirKind::Shared {
                SharedDirSr::open(&sr.location)
                    .and_then(|s| s.release(&pool))
                    .map_err(se)?;
            }
            drop(driver);
            remove_sr_dir(std::path::Path::new(&sr.location));
            Ok(SrDone::default())
        }
        SrWork::Scan { sr } => {
            let driver = open_driver(&sr)?;
            Ok(SrDone {
                vdis: driver.list().map_err(se)?,
                usage: Some(driver.usage().map_err(se)?),
                ..Default::default()
            })
        }
        SrWork::VdiCreate { sr, name, size } => {
            Ok(one(open_driver(&sr)?.create(&name, size).map_err(se)?))
        }
        SrWork::VdiDestroy { sr, location } => {
            open_driver(&sr)?.destroy(&location).map_err(se)?;
            Ok(SrDone::default())
        }
        SrWork::VdiClone { sr, location, name } => Ok(one(open_driver(&sr)?
            .clone_vdi(&location, &name)
            .map_err(se)?)),
        SrWork::VdiCopy {
            from,
            location,
            to,
            name,
        } => {
            let source = open_driver(&from)?;
            let target = open_driver(&to)?;
            Ok(one(xenpool_storage::copy_vdi(
                &*source, &location, &*target, &name,
            )
            .map_err(se)?))
        }
        SrWork::VdiStat { sr, location } => {
            Ok(one(open_driver(&sr)?.stat(&location).map_err(se)?))
        }
        SrWork::VdiResize { sr, location, size } => Ok(one(open_driver(&sr)?
            .resize(&location, size)
            .map_err(se)?)),
        SrWork::MemoryImage { vm_uuid, sr, name } => memory_image(hv, &vm_uuid, &sr, &name),
        SrWork::Unpause { vm_uuid } => {
            if let Some(d) = hv.domain_by_uuid(&vm_uuid).map_err(internal)? {
                if d.state == DomainState::Paused {
                    hv.unpause(d.domid).map_err(internal)?;
                }
            }
            Ok(SrDone::default())
        }
    }
}

/// Removes what the directory drivers leave in an SR directory with no VDI, then the
/// directory if nothing else is in it: files of other programs stay.
fn remove_sr_dir(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == ".sr-lock" || name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Pauses the VM's domain (if it runs), reads its memory through the hypervisor's
/// migration interface (so any backend that can migrate can checkpoint) and stores it, in
/// the migration stream format, as a new VDI on `sr`.
fn memory_image(
    hv: &dyn Hypervisor,
    vm_uuid: &str,
    sr: &SrPlace,
    name: &str,
) -> Result<SrDone, XenApiError> {
    let domain = hv
        .domain_by_uuid(vm_uuid)
        .map_err(internal)?
        .ok_or_else(|| internal(format!("VM {vm_uuid} has no domain on this host")))?;
    let paused = domain.state == DomainState::Running;
    if paused {
        hv.pause(domain.domid).map_err(internal)?;
    }
    let image = (|| {
        let page_count = hv.migration_begin(domain.domid).map_err(internal)?;
        let read = (|| {
            let pages = hv.migration_dirty_pages(domain.domid)?;
            let mut out = Vec::new();
            xenpool_xen::stream::encode_header(
                &mut out,
                &xenpool_xen::stream::StreamHeader { page_count },
            );
            hv.migration_read_pages(domain.domid, &pages, &mut |index, data| {
                xenpool_xen::stream::encode_page(&mut out, 1, index, data);
                Ok(())
            })?;
            xenpool_xen::stream::encode_end(&mut out, 1, pages.len() as u64);
            Ok(out)
        })();
        // Logging off again; the domain was paused before, so it stays paused.
        let _ = hv.migration_abort(domain.domid);
        read.map_err(|e: xenpool_xen::XenError| internal(e))
    })();
    let stored = image.and_then(|bytes| {
        let driver = open_driver(sr)?;
        let info = driver
            .create(name, bytes.len() as u64)
            .map_err(storage_error)?;
        let written = driver
            .attach(&info.location)
            .map_err(storage_error)
            .and_then(|a| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&a.path)
                    .map_err(internal)?;
                f.write_all_at(&bytes, 0).map_err(internal)?;
                f.sync_all().map_err(internal)
            });
        match written {
            Ok(()) => driver.stat(&info.location).map_err(storage_error),
            Err(e) => {
                let _ = driver.destroy(&info.location);
                Err(e)
            }
        }
    });
    match stored {
        Ok(info) => Ok(SrDone {
            vdi: Some(info),
            paused,
            ..Default::default()
        }),
        Err(e) => {
            if paused {
                let _ = hv.unpause(domain.domid);
            }
            Err(e)
        }
    }
}

impl Node {
    /// The pool's UUID (the owner of shared SR claims).
    pub fn pool_uuid(&self) -> String {
        self.state
            .db()
            .all::<PoolRecord>()
            .next()
            .map(|(_, p)| p.uuid.clone())
            .unwrap_or_default()
    }

    /// Where work on `sr` is done: a host with the SR plugged (`prefer` when it has, else
    /// this host when it has, else the first), and the SR's place there.
    /// `SR_HAS_NO_PBDS [sr]` when no host has it plugged.
    pub fn sr_site(&self, sr: &Ref, prefer: Option<&Ref>) -> Result<(Ref, SrPlace), XenApiError> {
        let db = self.state.db();
        let rec = db.get::<SrRecord>(sr).map_err(crate::conv::api_error)?;
        let kind = dir_kind(rec).unwrap_or(if rec.shared {
            DirKind::Shared
        } else {
            DirKind::Local
        });
        let mut hosts: Vec<Ref> = prefer.into_iter().cloned().collect();
        hosts.push(self.state.host.clone());
        let pbd =
            xenpool_core::snapshot::work_pbd(&db, sr, &hosts).map_err(crate::conv::api_error)?;
        let pbd = db.get::<PbdRecord>(&pbd).map_err(crate::conv::api_error)?;
        Ok((pbd.host.clone(), place_of(kind, pbd)))
    }

    /// The hosts that have `sr` plugged.
    pub fn sr_hosts(&self, sr: &Ref) -> Vec<Ref> {
        let db = self.state.db();
        db.get::<SrRecord>(sr)
            .map(|rec| {
                xenpool_core::snapshot::attached_pbds(&db, rec)
                    .into_iter()
                    .map(|(_, p)| p.host.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Does `work` on `host`: here, or through `host.xenpool_sr_work` on a member.
    pub async fn sr_work(&self, host: &Ref, work: SrWork) -> Result<SrDone, XenApiError> {
        if *host == self.state.host {
            return self.local_sr_work(work).await;
        }
        let address = crate::pool::host_address(&self.state.db(), host)?;
        let secret = crate::pool::secret_or_error(self)?;
        let json = serde_json::to_string(&work).map_err(internal)?;
        let result = self
            .transport
            .call(
                &address,
                "host.xenpool_sr_work",
                vec![Wire::String(secret), Wire::String(json)],
                // Copies of large disks take their time.
                Duration::from_secs(3600),
            )
            .await?;
        match result {
            Wire::String(s) => serde_json::from_str(&s).map_err(internal),
            _ => Err(internal("bad storage answer from member")),
        }
    }

    /// Does `work` on this host.
    pub async fn local_sr_work(&self, work: SrWork) -> Result<SrDone, XenApiError> {
        let hv = self.hypervisor.clone();
        tokio::task::spawn_blocking(move || run(&*hv, work))
            .await
            .map_err(internal)?
    }
}

/// The place a PBD gives its SR on its host.
pub fn place_of(kind: DirKind, pbd: &PbdRecord) -> SrPlace {
    SrPlace {
        kind,
        location: pbd
            .device_config
            .get("location")
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use xenpool_xen::{DomainSpec, SimulatedConfig, SimulatedHypervisor};

    fn place(kind: DirKind, dir: &std::path::Path) -> SrPlace {
        SrPlace {
            kind,
            location: dir.to_str().unwrap().to_string(),
        }
    }

    fn hv() -> SimulatedHypervisor {
        SimulatedHypervisor::new(SimulatedConfig::default()).unwrap()
    }

    #[test]
    fn a_shared_directory_serves_one_pool_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let sr = place(DirKind::Shared, &dir.path().join("sr"));
        let hv = hv();
        let plug = |pool: &str| {
            run(
                &hv,
                SrWork::Plug {
                    sr: sr.clone(),
                    pool: pool.into(),
                },
            )
        };
        plug("pool-a").unwrap();
        // Every host of the pool plugs it; the claim is the pool's, not the host's.
        plug("pool-a").unwrap();
        let e = plug("pool-b").unwrap_err();
        assert_eq!(e.code, "SR_BACKEND_FAILURE");
        assert!(e.params[1].contains("pool-a"), "{e:?}");
        let unplug = |release| SrWork::Unplug {
            sr: sr.clone(),
            pool: "pool-a".into(),
            release,
        };
        run(&hv, unplug(false)).unwrap();
        plug("pool-b").unwrap_err();
        run(&hv, unplug(true)).unwrap();
        plug("pool-b").unwrap();
    }

    #[test]
    fn destroy_removes_the_vdis_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sr");
        let sr = place(DirKind::Local, &root);
        let hv = hv();
        let pool = || "p".to_string();
        run(
            &hv,
            SrWork::Plug {
                sr: sr.clone(),
                pool: pool(),
            },
        )
        .unwrap();
        let made = run(
            &hv,
            SrWork::VdiCreate {
                sr: sr.clone(),
                name: "d".into(),
                size: 4096,
            },
        )
        .unwrap()
        .vdi
        .unwrap();
        let scan = run(&hv, SrWork::Scan { sr: sr.clone() }).unwrap();
        assert_eq!(scan.vdis, vec![made]);
        assert_eq!(scan.usage.unwrap().virtual_allocation, 4096);
        run(&hv, SrWork::Destroy { sr, pool: pool() }).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn another_pools_shared_directory_is_not_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let sr = place(DirKind::Shared, dir.path());
        let hv = hv();
        run(
            &hv,
            SrWork::Plug {
                sr: sr.clone(),
                pool: "theirs".into(),
            },
        )
        .unwrap();
        let theirs = run(
            &hv,
            SrWork::VdiCreate {
                sr: sr.clone(),
                name: "d".into(),
                size: 4096,
            },
        )
        .unwrap()
        .vdi
        .unwrap();
        let e = run(
            &hv,
            SrWork::Destroy {
                sr: sr.clone(),
                pool: "ours".into(),
            },
        )
        .unwrap_err();
        assert_eq!(e.code, "SR_BACKEND_FAILURE");
        let left = run(&hv, SrWork::Scan { sr }).unwrap().vdis;
        assert_eq!(left, vec![theirs]);
    }

    #[test]
    fn a_memory_image_holds_the_pages_of_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let sr = place(DirKind::Local, dir.path());
        let hv = hv();
        let domid = hv
            .create_domain(&DomainSpec {
                uuid: "vm-1".into(),
                name: "vm".into(),
                memory: 64 << 20,
                vcpus: 1,
            })
            .unwrap();
        hv.unpause(domid).unwrap();
        hv.populate_guest(domid, 10, 5, 42).unwrap();
        let expected: Vec<(u64, Vec<u8>)> = hv
            .with_guest_memory(domid, |m| {
                m.populated()
                    .into_iter()
                    .map(|i| (i, m.read(i).unwrap().to_vec()))
                    .collect()
            })
            .unwrap();
        assert_eq!(expected.len(), 5);

        let done = run(
            &hv,
            SrWork::MemoryImage {
                vm_uuid: "vm-1".into(),
                sr: sr.clone(),
                name: "image".into(),
            },
        )
        .unwrap();
        assert!(done.paused);
        let state = |hv: &SimulatedHypervisor| hv.domain_by_uuid("vm-1").unwrap().unwrap().state;
        assert_eq!(state(&hv), DomainState::Paused);
        let info = done.vdi.unwrap();
        let bytes = std::fs::read(dir.path().join(format!("{}.img", info.location))).unwrap();
        let mut decoder = xenpool_xen::stream::Decoder::new();
        let mut pages = Vec::new();
        decoder
            .feed(&bytes, &mut |record| {
                if let xenpool_xen::stream::Record::Page { index, data, .. } = record {
                    pages.push((index, data.to_vec()));
                }
                Ok(())
            })
            .unwrap();
        assert!(decoder.ended());
        assert_eq!(decoder.header().unwrap().page_count, (64 << 20) / 4096);
        assert_eq!(pages, expected);

        run(
            &hv,
            SrWork::Unpause {
                vm_uuid: "vm-1".into(),
            },
        )
        .unwrap();
        assert_eq!(state(&hv), DomainState::Running);
    }
}
