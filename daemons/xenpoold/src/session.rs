//! Who a call comes from, once its session is checked.

use xenpool_core::rbac::Role;
use xenpool_core::Ref;

/// The caller of a call, once its session is checked.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The session reference.
    pub session: Ref,
    /// The user's name.
    pub user: String,
    /// The user's strongest role.
    pub role: Role,
}
