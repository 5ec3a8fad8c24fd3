//! Decodes arbitrary bytes as an XML-RPC `<methodResponse>` (what the client reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenpool_rpc::xml;

fuzz_target!(|data: &[u8]| {
    if let Ok(Ok(value)) = xml::decode_response(data) {
        let again = xml::encode_response(&Ok(value));
        assert!(xml::decode_response(&again).is_ok());
    }
});
