//! JSON-RPC codec with xapi's shapes (served at `/jsonrpc`).
//!
//! The result of a call is the raw value, not the XML-RPC `{Status, Value}` envelope.
//! Responses, as xapi's `api_server.ml` and ocaml-rpc's `jsonrpc.ml` write them:
//!
//! | version | success | failure |
//! |---|---|---|
//! | 1.0 | `{"result":X,"error":null,"id":ID}` | `{"result":null,"error":["CODE","p1",…],"id":ID}` |
//! | 2.0 | `{"jsonrpc":"2.0","result":X,"id":ID}` | `{"jsonrpc":"2.0","error":{"code":1,"message":"CODE","data":["p1",…]},"id":ID}` |
//!
//! A request is 2.0 when it carries `"jsonrpc":"2.0"`, 1.0 otherwise. `id` is required
//! (xapi rejects notifications). In 2.0 `params` may be omitted, or be an object, which is
//! then the single parameter.

use serde::Deserialize;

use crate::error::{RpcError, XenApiError};
use crate::request::Call;
use crate::value::{EncodedValue, Encoding, Value};
use crate::writer::{Nesting, ValueWriter};
use crate::xml::foreign_encoding_error;

/// Which JSON-RPC dialect a request used; the response answers in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JsonVersion {
    /// JSON-RPC 1.0: no `jsonrpc` member; errors are `[code, params…]`.
    V1,
    /// JSON-RPC 2.0: errors are `{code: 1, message: CODE, data: [params…]}`.
    V2,
}

/// A decoded JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRequest {
    /// The dialect, which the response must repeat.
    pub version: JsonVersion,
    /// The request id, echoed back verbatim.
    pub id: Value,
    /// The call itself.
    pub call: Call,
}

/// A request that could not be decoded, with as much as was learnt for shaping the
/// error response (version 2.0 and a null id when nothing could be read).
#[derive(Debug)]
pub struct JsonRequestError {
    /// The dialect, if the document said.
    pub version: JsonVersion,
    /// The id, if the document carried one.
    pub id: Value,
    /// What was wrong.
    pub error: RpcError,
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    jsonrpc: Option<Value>,
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
}

/// Decodes a JSON-RPC request document.
pub fn decode_request(input: &[u8]) -> Result<JsonRequest, JsonRequestError> {
    let fail = |version, id, msg: String| JsonRequestError {
        version,
        id,
        error: RpcError::Json(msg),
    };
    let raw: RawRequest = serde_json::from_slice(input)
        .map_err(|e| fail(JsonVersion::V2, Value::Nil, e.to_string()))?;
    let version = match &raw.jsonrpc {
        Some(Value::String(s)) if s == "2.0" => JsonVersion::V2,
        _ => JsonVersion::V1,
    };
    let id = match raw.id {
        Some(id @ (Value::Int(_) | Value::String(_) | Value::Double(_))) => id,
        Some(other) => {
            return Err(fail(
                version,
                Value::Nil,
                format!("invalid id ({})", other.kind()),
            ))
        }
        None => return Err(fail(version, Value::Nil, "missing id".into())),
    };
    let method = match raw.method {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err(fail(version, id, "missing or invalid method".into())),
    };
    let params = match raw.params {
        Some(Value::Array(a)) => a,
        None => Vec::new(),
        Some(v @ Value::Struct(_)) if version == JsonVersion::V2 => vec![v],
        Some(other) => {
            return Err(fail(
                version,
                id,
                format!("params must be an array, not {}", other.kind()),
            ))
        }
    };
    Ok(JsonRequest {
        version,
        id,
        call: Call { method, params },
    })
}

/// Encodes a response in the request's dialect.
pub fn encode_response(
    version: JsonVersion,
    id: &Value,
    result: &Result<Value, XenApiError>,
) -> Vec<u8> {
    let body = match result {
        Ok(v) => len_hint(v),
        Err(e) => 64 + e.code.len() + e.params.iter().map(|p| p.len() + 3).sum::<usize>(),
    };
    let n = 64 + body;
    let mut out = Vec::with_capacity(n + n / 16);
    encode_response_into(&mut out, version, id, result);
    out
}

/// The encoded size of `v` before escaping, to size the output buffer once.
fn len_hint(v: &Value) -> usize {
    match v {
        Value::String(s) | Value::DateTime(s) => s.len() + 3,
        Value::Int(_) | Value::Double(_) => 24,
        Value::Bool(_) | Value::Nil => 6,
        Value::Encoded(e) => e.as_bytes().len(),
        Value::Array(a) => 2 + a.iter().map(len_hint).sum::<usize>(),
        Value::Struct(m) => {
            2 + m
                .iter()
                .map(|(k, e)| k.len() + 4 + len_hint(e))
                .sum::<usize>()
        }
    }
}

/// Appends a response in the request's dialect to `out`.
///
/// A result holding a [`Value::Encoded`] made for XML-RPC is answered with
/// `INTERNAL_ERROR` instead.
pub fn encode_response_into(
    out: &mut Vec<u8>,
    version: JsonVersion,
    id: &Value,
    result: &Result<Value, XenApiError>,
) {
    if let Ok(v) = result {
        if let Some(found) = v.foreign_encoding(Encoding::Json) {
            let refused = Err(foreign_encoding_error(found, Encoding::Json));
            return encode_response_into(out, version, id, &refused);
        }
    }
    match (version, result) {
        (JsonVersion::V1, Ok(v)) => {
            out.extend_from_slice(b"{\"result\":");
            write_value(out, v);
            out.extend_from_slice(b",\"error\":null");
        }
        (JsonVersion::V1, Err(e)) => {
            out.extend_from_slice(b"{\"result\":null,\"error\":[");
            write_json(out, &e.code);
            for p in &e.params {
                out.push(b',');
                write_json(out, p);
            }
            out.push(b']');
        }
        (JsonVersion::V2, Ok(v)) => {
            out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"result\":");
            write_value(out, v);
        }
        (JsonVersion::V2, Err(e)) => {
            // xapi always sends code 1: the code is unused, but some clients read 0 as
            // success.
            out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":1,\"message\":");
            write_json(out, &e.code);
            out.extend_from_slice(b",\"data\":");
            write_json(out, &e.params);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"id\":");
    write_value(out, id);
    out.push(b'}');
}

/// Appends `v` through a [`JsonWriter`], which splices encoded values in place.
fn write_value(out: &mut Vec<u8>, v: &Value) {
    let mut w = JsonWriter::from_vec(std::mem::take(out));
    w.value(v);
    *out = w.out;
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let mark = out.len();
    // Serialising a `Value`, a string or a list of strings into memory cannot fail
    // (keys are strings; non-finite floats become null), but do not leave half a value.
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

/// Encodes a request (what a client sends).
pub fn encode_request(version: JsonVersion, id: i64, method: &str, params: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(b'{');
    if version == JsonVersion::V2 {
        out.extend_from_slice(b"\"jsonrpc\":\"2.0\",");
    }
    out.extend_from_slice(b"\"method\":");
    write_json(&mut out, method);
    out.extend_from_slice(b",\"params\":");
    let mut w = JsonWriter::from_vec(out);
    w.begin_array();
    for p in params {
        w.value(p);
    }
    w.end_array();
    let mut out = w.out;
    out.extend_from_slice(b",\"id\":");
    write_json(&mut out, &id);
    out.push(b'}');
    out
}

/// A [`ValueWriter`] producing JSON: the same bytes as serialising the equivalent
/// [`Value`] with `serde_json` (compact, members in order, non-finite numbers as `null`).
#[derive(Debug, Default)]
pub struct JsonWriter {
    out: Vec<u8>,
    nesting: Nesting,
}

impl JsonWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer whose buffer holds `bytes` before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        Self::from_vec(Vec::with_capacity(bytes))
    }

    /// A writer appending to `out` (the response encoder's buffer).
    fn from_vec(out: Vec<u8>) -> Self {
        JsonWriter {
            out,
            nesting: Nesting::default(),
        }
    }

    /// The value written, or why it is not one complete value.
    pub fn finish(self) -> Result<EncodedValue, RpcError> {
        self.nesting.finish()?;
        Ok(EncodedValue::new(Encoding::Json, self.out))
    }

    fn before_value(&mut self) {
        if self.nesting.before_value() {
            self.out.push(b',');
        }
    }

    fn scalar<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        self.before_value();
        write_json(&mut self.out, v);
        self.nesting.after_value();
    }

    fn raw(&mut self, text: &[u8]) {
        self.before_value();
        self.out.extend_from_slice(text);
        self.nesting.after_value();
    }
}

impl ValueWriter for JsonWriter {
    fn string(&mut self, s: &str) {
        self.scalar(s);
    }

    fn int(&mut self, i: i64) {
        self.scalar(&i);
    }

    fn double(&mut self, d: f64) {
        self.scalar(&d);
    }

    fn bool(&mut self, b: bool) {
        self.raw(if b { b"true" } else { b"false" });
    }

    fn datetime(&mut self, s: &str) {
        // xapi's JSON-RPC sends a dateTime as a plain string.
        self.scalar(s);
    }

    fn nil(&mut self) {
        self.raw(b"null");
    }

    fn begin_array(&mut self) {
        self.before_value();
        self.nesting.open(false);
        self.out.push(b'[');
    }

    fn end_array(&mut self) {
        self.out.push(b']');
        self.nesting.close(false);
        self.nesting.after_value();
    }

    fn begin_struct(&mut self) {
        self.before_value();
        self.nesting.open(true);
        self.out.push(b'{');
    }

    fn member(&mut self, name: &str) {
        if self.nesting.member() {
            self.out.push(b',');
        }
        write_json(&mut self.out, name);
        self.out.push(b':');
    }

    fn end_struct(&mut self) {
        self.out.push(b'}');
        self.nesting.close(true);
        self.nesting.after_value();
    }

    fn encoded(&mut self, v: &EncodedValue) {
        if v.encoding() == Encoding::Json {
            self.raw(v.as_bytes());
            return;
        }
        match v.decode() {
            Ok(plain) => self.value(&plain),
            // Unreachable for what the writers finish; null keeps the document valid.
            Err(_) => self.nil(),
        }
    }
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// Decodes a response of either dialect: `Ok(Ok(result))` or `Ok(Err(failure))`.
pub fn decode_response(input: &[u8]) -> Result<Result<Value, XenApiError>, RpcError> {
    let raw: RawResponse =
        serde_json::from_slice(input).map_err(|e| RpcError::Json(e.to_string()))?;
    match raw.error {
        None => Ok(Ok(raw.result.unwrap_or(Value::Nil))),
        Some(desc @ Value::Array(_)) => Ok(Err(crate::xml::error_from_description(Some(&desc)))),
        Some(obj @ Value::Struct(_)) => {
            let code = obj
                .get("message")
                .and_then(Value::scalar_text)
                .unwrap_or_default();
            let params = match obj.get("data") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.scalar_text().unwrap_or_default())
                    .collect(),
                _ => Vec::new(),
            };
            Ok(Err(XenApiError { code, params }))
        }
        Some(other) => Err(RpcError::Protocol(format!(
            "JSON-RPC error member is a {}",
            other.kind()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn v1_and_v2_shapes() {
        let ok: Result<Value, XenApiError> = Ok(Value::from("OpaqueRef:x"));
        let err: Result<Value, XenApiError> = Err(XenApiError::handle_invalid("VM", "OpaqueRef:y"));
        let id = Value::Int(7);
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        assert_eq!(
            s(encode_response(JsonVersion::V1, &id, &ok)),
            r#"{"result":"OpaqueRef:x","error":null,"id":7}"#
        );
        assert_eq!(
            s(encode_response(JsonVersion::V1, &id, &err)),
            r#"{"result":null,"error":["HANDLE_INVALID","VM","OpaqueRef:y"],"id":7}"#
        );
        assert_eq!(
            s(encode_response(JsonVersion::V2, &id, &ok)),
            r#"{"jsonrpc":"2.0","result":"OpaqueRef:x","id":7}"#
        );
        assert_eq!(
            s(encode_response(JsonVersion::V2, &Value::from("a"), &err)),
            r#"{"jsonrpc":"2.0","error":{"code":1,"message":"HANDLE_INVALID","data":["VM","OpaqueRef:y"]},"id":"a"}"#
        );
        for v in [JsonVersion::V1, JsonVersion::V2] {
            assert_eq!(decode_response(&encode_response(v, &id, &ok)).unwrap(), ok);
            assert_eq!(
                decode_response(&encode_response(v, &id, &err)).unwrap(),
                err
            );
        }
    }

    #[test]
    fn request_forms() {
        let r = decode_request(
            br#"{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","pw","1.0","xo"],"id":0}"#,
        )
        .unwrap();
        assert_eq!(r.version, JsonVersion::V2);
        assert_eq!(r.id, Value::Int(0));
        assert_eq!(r.call.method, "session.login_with_password");
        assert_eq!(r.call.params.len(), 4);

        let r = decode_request(br#"{"method":"VM.get_all","params":["s"],"id":"x1"}"#).unwrap();
        assert_eq!(r.version, JsonVersion::V1);
        assert_eq!(r.id, Value::from("x1"));

        let r = decode_request(br#"{"jsonrpc":"2.0","method":"m.n","id":1}"#).unwrap();
        assert!(r.call.params.is_empty());
        let r =
            decode_request(br#"{"jsonrpc":"2.0","method":"m.n","params":{"a":1},"id":1}"#).unwrap();
        assert_eq!(r.call.params.len(), 1);

        let e = decode_request(br#"{"jsonrpc":"2.0","method":"m.n","params":[]}"#).unwrap_err();
        assert_eq!(e.version, JsonVersion::V2);
        let e = decode_request(br#"{"method":"m.n","params":{"a":1},"id":3}"#).unwrap_err();
        assert_eq!((e.version, e.id), (JsonVersion::V1, Value::Int(3)));
        assert!(decode_request(b"[1,2]").is_err());
        assert!(decode_request(b"{\"method\":").is_err());
    }
}
