//! `host.reboot` and `host.shutdown` of a simulated host: the daemon really stops. A
//! reboot takes every domain down, as a real one does, and starts this program again in
//! the same process (same pid, process group and network namespace), so the host comes
//! back with its data directory and rejoins as it was; a shutdown takes the domains down
//! and exits.

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;

/// This run of the daemon: a reboot starts a new one, which is how the coordinator knows
/// the host really went down.
pub fn boot_id() -> &'static str {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// How long the answer to the call gets to reach the caller before the host goes down.
const ANSWER_GRACE: Duration = Duration::from_millis(300);

/// What happens to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCycle {
    /// Down, then up again.
    Reboot,
    /// Down for good.
    Shutdown,
}

impl PowerCycle {
    /// From the internal call's parameter.
    pub fn parse(s: &str) -> Option<PowerCycle> {
        match s {
            "reboot" => Some(PowerCycle::Reboot),
            "shutdown" => Some(PowerCycle::Shutdown),
            _ => None,
        }
    }

    /// As the internal call names it.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerCycle::Reboot => "reboot",
            PowerCycle::Shutdown => "shutdown",
        }
    }
}

/// Takes this host down shortly, once the caller had time to read the answer.
pub fn schedule(node: Arc<Node>, what: PowerCycle) {
    tokio::spawn(async move {
        tokio::time::sleep(ANSWER_GRACE).await;
        tracing::warn!(action = what.as_str(), host = %node.config.address, pid = std::process::id(), "the host goes down on request");
        crate::domains::destroy_all_guests(&*node.hypervisor);
        match what {
            PowerCycle::Shutdown => std::process::exit(0),
            PowerCycle::Reboot => {
                use std::os::unix::process::CommandExt;
                let exe = std::env::current_exe();
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                let err = match exe {
                    Ok(exe) => std::process::Command::new(exe).args(args).exec(),
                    Err(e) => e,
                };
                // Not started again: down is the safe way to fail a reboot.
                eprintln!("xenpoold: the reboot could not start the daemon again: {err}");
                std::process::exit(1);
            }
        }
    });
}
