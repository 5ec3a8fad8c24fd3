//! What a host keeps on its own disk beside the pool database: its role in the pool (the
//! role file), the pool secret hosts authenticate each other with, and other secrets,
//! written owner-readable and durably.

use std::io::Write;
use std::path::Path;

/// The role of this host in its pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the database and serves control calls.
    Coordinator,
    /// Follows the coordinator at this address.
    Member {
        /// The coordinator's address.
        coordinator: String,
    },
}

const ROLE_FILE: &str = "pool-role";
const SECRET_FILE: &str = "pool-secret";

/// A role as the role file and `pool.xenpool_whois` spell it: `coordinator`, or
/// `member:<coordinator address>`.
pub fn role_text(role: &Role) -> String {
    match role {
        Role::Coordinator => "coordinator".to_string(),
        Role::Member { coordinator } => format!("member:{coordinator}"),
    }
}

/// A role from its text; anything else is `None`.
pub fn parse_role(text: &str) -> Option<Role> {
    match text.trim() {
        "coordinator" => Some(Role::Coordinator),
        other => other
            .strip_prefix("member:")
            .filter(|a| !a.is_empty())
            .map(|a| Role::Member {
                coordinator: a.to_string(),
            }),
    }
}

/// Reads the role file; a host without one coordinates its own pool of one.
pub fn read_role(data_dir: &Path) -> Role {
    std::fs::read_to_string(data_dir.join(ROLE_FILE))
        .ok()
        .and_then(|t| parse_role(&t))
        .unwrap_or(Role::Coordinator)
}

fn write_durably(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    write_secret(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes the role file durably.
pub fn write_role(data_dir: &Path, role: &Role) -> anyhow::Result<()> {
    write_durably(&data_dir.join(ROLE_FILE), &role_text(role))
}

/// The pool secret hosts use to authenticate each other, if this host has one.
pub fn read_secret(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(SECRET_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Drops the pool secret: a host that left its pool must not authenticate as a member.
pub fn forget_secret(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(SECRET_FILE));
}

/// Keeps the pool secret (owner-readable only).
pub fn write_secret_file(data_dir: &Path, secret: &str) -> anyhow::Result<()> {
    write_durably(&data_dir.join(SECRET_FILE), secret)
}

/// Compares `given` with this host's pool secret in time independent of where they differ.
pub fn secret_matches(data_dir: &Path, given: &str) -> bool {
    let Some(mine) = read_secret(data_dir) else {
        return false;
    };
    let (a, b) = (mine.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a secret readable by its owner only.
pub fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
