//! First start of a host: its root password and demonstration disk, then a pool of one as
//! `xenpool_core::genesis` describes it.

use std::path::{Path, PathBuf};

use xenpool_core::genesis::{create_pool, Fresh, HostFacts};
use xenpool_core::Ref;

use crate::config::Config;
use crate::passwords::hash_password;
use crate::state::{now, State};

const MIB: i64 = 1024 * 1024;

/// Where the root password is written on first start.
pub fn root_password_path(data_dir: &Path) -> PathBuf {
    data_dir.join("root-password")
}

/// A random password of 24 characters from an unambiguous alphabet.
pub fn random_password(state: &State) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bits = state.random();
    let mut more = state.random();
    (0..24)
        .map(|i| {
            if i == 12 {
                bits = more;
                more = 0;
            }
            let c = ALPHABET[(bits % ALPHABET.len() as u128) as usize];
            bits /= ALPHABET.len() as u128;
            c as char
        })
        .collect()
}

impl Fresh for State {
    fn new_ref(&self) -> Ref {
        State::new_ref(self)
    }
    fn new_uuid(&self) -> String {
        State::new_uuid(self)
    }
    fn random(&self) -> u128 {
        State::random(self)
    }
}

/// What this host knows about itself, from its configuration.
pub fn host_facts(config: &Config, host_uuid: &str) -> HostFacts {
    HostFacts {
        uuid: host_uuid.to_string(),
        label: config.host_label(),
        address: config.address.to_string(),
        memory_total: config.memory_total_mib as i64 * MIB,
        dom0_memory: config.dom0_memory_mib as i64 * MIB,
        local_sr_location: config
            .data_dir
            .join("sr-local")
            .to_string_lossy()
            .into_owned(),
        shared_sr_location: config
            .shared_sr_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned()),
        product_version: env!("CARGO_PKG_VERSION").to_string(),
        now: now(),
    }
}

/// Builds a new pool of one in an empty database. Returns the root password.
pub fn bootstrap(state: &State, config: &Config, host_uuid: &str) -> anyhow::Result<String> {
    let password = random_password(state);
    let hash = hash_password(&password, state.random()).map_err(|e| anyhow::anyhow!(e))?;
    let host = state.host.clone();
    // The demonstration VM's disk is a real file on the SR it is recorded on.
    let demo_disk = if config.demo_objects {
        let disk: Result<String, xenpool_storage::StorageError> = match &config.shared_sr_dir {
            Some(dir) => xenpool_storage::SharedDirSr::open(dir)
                .and_then(|sr| xenpool_storage::SrDriver::create(&sr, "demo-vm disk", 8 << 30)),
            None => xenpool_storage::LocalDirSr::open(config.data_dir.join("sr-local"))
                .and_then(|sr| xenpool_storage::SrDriver::create(&sr, "demo-vm disk", 8 << 30)),
        }
        .map(|i| i.location);
        disk.map_err(|e| anyhow::anyhow!("cannot create the demonstration disk: {e}"))?
    } else {
        String::new()
    };
    let facts = host_facts(config, host_uuid);
    let demo_disk = config.demo_objects.then_some(demo_disk);
    state
        .write(|txn| create_pool(txn, state, &facts, &host, &hash, demo_disk.as_deref()))
        .map_err(|e| anyhow::anyhow!("cannot create the pool: {e}"))?;
    Ok(password)
}
