//! Decodes arbitrary bytes as a JSON-RPC request and encodes a response to it, as the
//! server does; also reads them as a response, as the client does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenpool_rpc::json;

fuzz_target!(|data: &[u8]| {
    match json::decode_request(data) {
        Ok(req) => {
            let body = json::encode_response(
                req.version,
                &req.id,
                &Ok(xenpool_rpc::Value::Array(req.call.params)),
            );
            assert!(json::decode_response(&body).is_ok());
        }
        Err(e) => {
            let err = Err(xenpool_rpc::XenApiError::internal_error(
                e.error.to_string(),
            ));
            let body = json::encode_response(e.version, &e.id, &err);
            assert!(json::decode_response(&body).is_ok());
        }
    }
    let _ = json::decode_response(data);
});
