//! Replays every file of the fuzz corpus (`../fuzz/corpus/*/`) through every decoder, with
//! the same checks as the fuzz targets, so CI covers the corpus without a nightly fuzzer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use xenpool_rpc::{json, xml, Value, XenApiError};

fn corpus_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).expect("fuzz corpus directory") {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                files.push(f);
            }
        }
    }
    files.sort();
    files
}

/// The `xmlrpc_call` target's property: a decoded call re-encodes to a fixed point.
fn check_xml_call(data: &[u8]) -> bool {
    let Ok(call) = xml::decode_call(data) else {
        return false;
    };
    let again = xml::encode_call(&call.method, &call.params);
    let decoded = xml::decode_call(&again)
        .map(|c| xml::encode_call(&c.method, &c.params))
        .ok();
    assert_eq!(decoded.as_deref(), Some(&again[..]));
    true
}

/// The `xmlrpc_response` target's property.
fn check_xml_response(data: &[u8]) -> bool {
    match xml::decode_response(data) {
        Ok(Ok(value)) => {
            assert!(xml::decode_response(&xml::encode_response(&Ok(value))).is_ok());
            true
        }
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// The `jsonrpc_request` target's property: whatever arrives, the answer decodes.
fn check_json(data: &[u8]) -> bool {
    let ok = match json::decode_request(data) {
        Ok(req) => {
            let body =
                json::encode_response(req.version, &req.id, &Ok(Value::Array(req.call.params)));
            assert!(json::decode_response(&body).is_ok());
            true
        }
        Err(e) => {
            let err = Err(XenApiError::internal_error(e.error.to_string()));
            assert!(json::decode_response(&json::encode_response(e.version, &e.id, &err)).is_ok());
            false
        }
    };
    let _ = json::decode_response(data);
    ok
}

#[test]
fn corpus_replays_without_panics() {
    let files = corpus_files();
    assert!(files.len() >= 15, "seed corpus missing: {files:?}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let call = check_xml_call(&data);
        let resp = check_xml_response(&data);
        let req = check_json(&data);
        // The hand-written seeds (named with an extension) are real, valid documents.
        let dir = f
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match (dir, f.extension().and_then(|e| e.to_str())) {
            (Some("xmlrpc_call"), Some("xml")) => assert!(call, "{name} should decode"),
            (Some("xmlrpc_response"), Some("xml")) => assert!(resp, "{name} should decode"),
            (Some("jsonrpc_request"), Some("json"))
                if !name.contains("missing_id") && !name.contains("response") =>
            {
                assert!(req, "{name} should decode")
            }
            _ => {}
        }
    }
}
