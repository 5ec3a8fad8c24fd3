//! XenAPI calls of aggregated local storage.

use xenpool_rpc::{Request, XenApiError};

use super::{Api, ApiResult, Ctx};

impl Api {
    #[allow(dead_code)] // until SR.create routes here
    /// `SR.create` with `type` `als` (the whole request, as `SR.create` received it).
    pub(super) async fn als_sr_create(&self, _cx: &Ctx, _req: &Request) -> ApiResult {
        Err(XenApiError::new(
            "SR_UNKNOWN_DRIVER",
            [xenpool_storage::als::SR_TYPE],
        ))
    }
}
