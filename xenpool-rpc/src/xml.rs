//! XML-RPC codec, byte-compatible with what xapi sends and tolerant of what clients send.
//!
//! Encoding follows xapi (ocaml-rpc): strings go out as bare `<value>text</value>`, the
//! document is compact (Xen Orchestra's parser fails on indentation), and the XenAPI
//! envelope `{Status, Value | ErrorDescription}` wraps every result.
//!
//! Decoding accepts what the clients in the field produce: `<string>` tags or none,
//! `<params/>` or no params at all, whitespace between elements (Python's `xmlrpc.client`
//! puts newlines everywhere), entities and character references, `<nil/>`, CDATA, and
//! namespace-prefixed extension tags such as `<ex:nil/>`. It never panics and refuses
//! nesting deeper than [`MAX_DEPTH`].

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::{RpcError, XenApiError};
use crate::request::Call;
use crate::value::{EncodedValue, Encoding, Value};
use crate::writer::{format_i64, Nesting, ValueWriter};

/// How deeply arrays and structs may nest in a decoded document. XenAPI values are a
/// handful of levels deep; the bound keeps a hostile document from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

const XML_DECL: &[u8] = b"<?xml version=\"1.0\"?>";

// ---------------------------------------------------------------------------------------
// Encoding

/// Appends `<value>…</value>` for `v` to `out`.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => {
            out.extend_from_slice(b"<value>");
            escape_into(out, s);
            out.extend_from_slice(b"</value>");
        }
        Value::Int(i) => {
            // `<int>` is what every XML-RPC library reads; `<i8>` only where it must be.
            if i32::try_from(*i).is_ok() {
                out.extend_from_slice(b"<value><int>");
                push_i64(out, *i);
                out.extend_from_slice(b"</int></value>");
            } else {
                out.extend_from_slice(b"<value><i8>");
                push_i64(out, *i);
                out.extend_from_slice(b"</i8></value>");
            }
        }
        Value::Double(d) => {
            out.extend_from_slice(b"<value><double>");
            // Display is the shortest text that parses back to the same f64.
            out.extend_from_slice(d.to_string().as_bytes());
            out.extend_from_slice(b"</double></value>");
        }
        Value::Bool(b) => out.extend_from_slice(if *b {
            b"<value><boolean>1</boolean></value>"
        } else {
            b"<value><boolean>0</boolean></value>"
        }),
        Value::DateTime(s) => {
            out.extend_from_slice(b"<value><dateTime.iso8601>");
            escape_into(out, s);
            out.extend_from_slice(b"</dateTime.iso8601></value>");
        }
        Value::Array(a) => {
            out.extend_from_slice(b"<value><array><data>");
            for e in a {
                encode_value(out, e);
            }
            out.extend_from_slice(b"</data></array></value>");
        }
        Value::Struct(m) => {
            out.extend_from_slice(b"<value><struct>");
            for (k, e) in m {
                out.extend_from_slice(b"<member><name>");
                escape_into(out, k);
                out.extend_from_slice(b"</name>");
                encode_value(out, e);
                out.extend_from_slice(b"</member>");
            }
            out.extend_from_slice(b"</struct></value>");
        }
        Value::Nil => out.extend_from_slice(b"<value><nil/></value>"),
        Value::Encoded(e) => encode_encoded(out, e),
    }
}

/// An encoded value in place: copied when it is XML, decoded and re-encoded otherwise.
fn encode_encoded(out: &mut Vec<u8>, e: &EncodedValue) {
    if e.encoding() == Encoding::Xml {
        out.extend_from_slice(e.as_bytes());
        return;
    }
    match e.decode() {
        Ok(v) => encode_value(out, &v),
        // The writers only finish well-formed values, so this is unreachable; nil keeps
        // the document well formed all the same.
        Err(_) => out.extend_from_slice(b"<value><nil/></value>"),
    }
}

/// What a response carries instead of a result holding a value encoded for another
/// protocol (a handler bug: it chose the shapes of the wrong protocol).
pub(crate) fn foreign_encoding_error(found: Encoding, wanted: Encoding) -> XenApiError {
    XenApiError::internal_error(format!(
        "a result encoded for {} cannot be sent in a {} response",
        found.name(),
        wanted.name()
    ))
}

/// A `<value>` document fragment as a string (mostly for tests and logs).
pub fn value_to_string(v: &Value) -> String {
    let mut out = Vec::new();
    encode_value(&mut out, v);
    // The encoder only ever writes UTF-8 (ASCII markup around escaped UTF-8 text).
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends a complete XenAPI response (`<methodResponse>` with the Status envelope).
///
/// A result holding a [`Value::Encoded`] made for JSON-RPC is answered with
/// `INTERNAL_ERROR` instead.
pub fn encode_response_into(out: &mut Vec<u8>, result: &Result<Value, XenApiError>) {
    if let Ok(v) = result {
        if let Some(found) = v.foreign_encoding(Encoding::Xml) {
            let refused = Err(foreign_encoding_error(found, Encoding::Xml));
            return encode_response_into(out, &refused);
        }
    }
    match result {
        Ok(v) => {
            out.extend_from_slice(SUCCESS_HEAD);
            encode_value(out, v);
        }
        Err(e) => {
            out.extend_from_slice(XML_DECL);
            out.extend_from_slice(
                b"<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data>",
            );
            out.extend_from_slice(b"<value>");
            escape_into(out, &e.code);
            out.extend_from_slice(b"</value>");
            for p in &e.params {
                out.extend_from_slice(b"<value>");
                escape_into(out, p);
                out.extend_from_slice(b"</value>");
            }
            out.extend_from_slice(b"</data></array></value>");
        }
    }
    out.extend_from_slice(RESPONSE_TAIL);
}

/// A success response up to its value.
const SUCCESS_HEAD: &[u8] = b"<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>";

/// Every response after its value or error description.
const RESPONSE_TAIL: &[u8] = b"</member></struct></value></param></params></methodResponse>";

/// A complete response as pieces to send one after the other: an already encoded value
/// goes out as it is, between a fixed head and tail, instead of being copied into a
/// document. The pieces put together are exactly [`encode_response`]'s bytes.
pub(crate) fn response_pieces(result: Result<Value, XenApiError>) -> [bytes::Bytes; 3] {
    match result {
        Ok(Value::Encoded(e)) if e.encoding() == Encoding::Xml => [
            bytes::Bytes::from_static(SUCCESS_HEAD),
            bytes::Bytes::from(e.into_bytes()),
            bytes::Bytes::from_static(RESPONSE_TAIL),
        ],
        other => [
            bytes::Bytes::from(encode_response(&other)),
            bytes::Bytes::new(),
            bytes::Bytes::new(),
        ],
    }
}

/// The size [`encode_response`] will need, with a little room for escapes.
pub fn response_len_hint(result: &Result<Value, XenApiError>) -> usize {
    let body = match result {
        Ok(v) => encoded_len_hint(v),
        Err(e) => 64 + e.code.len() + e.params.iter().map(|p| p.len() + 15).sum::<usize>(),
    };
    let n = 280 + body;
    n + n / 16
}

/// A complete XenAPI response document.
pub fn encode_response(result: &Result<Value, XenApiError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(response_len_hint(result));
    encode_response_into(&mut out, result);
    out
}

/// A `<methodResponse>` carrying `v` with no Status envelope. xapi answers
/// `system.listMethods` this way, so generic XML-RPC introspection tools work. A value
/// encoded for JSON-RPC is refused as in [`encode_response_into`].
pub fn encode_raw_response(v: &Value) -> Vec<u8> {
    if let Some(found) = v.foreign_encoding(Encoding::Xml) {
        return encode_response(&Err(foreign_encoding_error(found, Encoding::Xml)));
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(XML_DECL);
    out.extend_from_slice(b"<methodResponse><params><param>");
    encode_value(&mut out, v);
    out.extend_from_slice(b"</param></params></methodResponse>");
    out
}

/// A complete `<methodCall>` document (what a client sends).
pub fn encode_call(method: &str, params: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(XML_DECL);
    out.extend_from_slice(b"<methodCall><methodName>");
    escape_into(&mut out, method);
    out.extend_from_slice(b"</methodName><params>");
    for p in params {
        out.extend_from_slice(b"<param>");
        encode_value(&mut out, p);
        out.extend_from_slice(b"</param>");
    }
    out.extend_from_slice(b"</params></methodCall>");
    out
}

/// What each byte becomes in element content: 0 = itself, 1 = dropped (control
/// characters XML 1.0 cannot carry, dropped as xapi does), 2.. = an entity below. `"`
/// needs no escape in content and passes through.
static ESCAPE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = 1;
        i += 1;
    }
    t[b'\t' as usize] = 0;
    t[b'\n' as usize] = 0;
    // `\r` becomes a character reference so conforming parsers keep it.
    t[b'\r' as usize] = 2;
    t[b'<' as usize] = 3;
    t[b'>' as usize] = 4;
    t[b'&' as usize] = 5;
    t
};

const ESCAPES: [&[u8]; 6] = [b"", b"", b"&#13;", b"&lt;", b"&gt;", b"&amp;"];

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any byte of `x` is below `n` (exact for n <= 128).
#[inline]
fn any_byte_below(x: u64, n: u8) -> bool {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0
}

/// Whether any byte of `x` equals `c`.
#[inline]
fn any_byte_is(x: u64, c: u8) -> bool {
    any_byte_below(x ^ (ONES * u64::from(c)), 1)
}

#[inline]
fn word_needs_escape(x: u64) -> bool {
    any_byte_below(x, 0x20) | any_byte_is(x, b'<') | any_byte_is(x, b'>') | any_byte_is(x, b'&')
}

/// Whether any byte needs escaping, eight bytes per step: most text in a response needs
/// nothing and is then copied in one piece.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in words.by_ref() {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        if word_needs_escape(u64::from_ne_bytes(a)) {
            return true;
        }
    }
    let tail = words.remainder();
    if tail.is_empty() {
        return false;
    }
    // Re-read the last eight bytes (overlapping the words already checked) rather than
    // pad the tail in a buffer, whose byte stores the word load would stall on.
    if let Some(last) = bytes.len().checked_sub(8).and_then(|at| bytes.get(at..)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(last);
        return word_needs_escape(u64::from_ne_bytes(a));
    }
    tail.iter().any(|&b| ESCAPE_CLASS[b as usize] != 0)
}

/// Escapes text for element content.
#[inline]
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if needs_escape(bytes) {
        escape_slow(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

#[cold]
fn escape_slow(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let class = ESCAPE_CLASS[b as usize];
        if class != 0 {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(ESCAPES[class as usize]);
            start = i + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The encoded size of `v` before escaping; used to size the output buffer once, since
/// growing it step by step costs more than the encoding itself for large records.
pub fn encoded_len_hint(v: &Value) -> usize {
    match v {
        Value::String(s) => 15 + s.len(),
        Value::Int(_) => 36,
        Value::Double(_) => 46,
        Value::Bool(_) => 35,
        Value::DateTime(s) => 51 + s.len(),
        Value::Nil => 20,
        Value::Encoded(e) => e.as_bytes().len(),
        Value::Array(a) => 38 + a.iter().map(encoded_len_hint).sum::<usize>(),
        Value::Struct(m) => {
            31 + m
                .iter()
                .map(|(k, e)| 30 + k.len() + encoded_len_hint(e))
                .sum::<usize>()
        }
    }
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(format_i64(&mut buf, v).as_bytes());
}

// ---------------------------------------------------------------------------------------
// Streaming

/// A [`ValueWriter`] producing XML-RPC: the same bytes as [`encode_value`] for the
/// equivalent [`Value`].
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: Vec<u8>,
    nesting: Nesting,
}

impl XmlWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer whose buffer holds `bytes` before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        XmlWriter {
            out: Vec::with_capacity(bytes),
            nesting: Nesting::default(),
        }
    }

    /// The value written, or why it is not one complete value.
    pub fn finish(self) -> Result<EncodedValue, RpcError> {
        self.nesting.finish()?;
        Ok(EncodedValue::new(Encoding::Xml, self.out))
    }

    fn scalar(&mut self, open: &[u8], text: &str, close: &[u8]) {
        self.nesting.before_value();
        self.out.extend_from_slice(open);
        escape_into(&mut self.out, text);
        self.out.extend_from_slice(close);
        self.after_value();
    }

    fn after_value(&mut self) {
        if self.nesting.after_value() {
            self.out.extend_from_slice(b"</member>");
        }
    }
}

impl ValueWriter for XmlWriter {
    fn string(&mut self, s: &str) {
        self.scalar(b"<value>", s, b"</value>");
    }

    fn int(&mut self, i: i64) {
        self.nesting.before_value();
        encode_value(&mut self.out, &Value::Int(i));
        self.after_value();
    }

    fn double(&mut self, d: f64) {
        self.nesting.before_value();
        encode_value(&mut self.out, &Value::Double(d));
        self.after_value();
    }

    fn bool(&mut self, b: bool) {
        self.nesting.before_value();
        encode_value(&mut self.out, &Value::Bool(b));
        self.after_value();
    }

    fn datetime(&mut self, s: &str) {
        self.scalar(
            b"<value><dateTime.iso8601>",
            s,
            b"</dateTime.iso8601></value>",
        );
    }

    fn nil(&mut self) {
        self.nesting.before_value();
        encode_value(&mut self.out, &Value::Nil);
        self.after_value();
    }

    fn begin_array(&mut self) {
        self.nesting.before_value();
        self.nesting.open(false);
        self.out.extend_from_slice(b"<value><array><data>");
    }

    fn end_array(&mut self) {
        self.out.extend_from_slice(b"</data></array></value>");
        self.nesting.close(false);
        self.after_value();
    }

    fn begin_struct(&mut self) {
        self.nesting.before_value();
        self.nesting.open(true);
        self.out.extend_from_slice(b"<value><struct>");
    }

    fn member(&mut self, name: &str) {
        self.nesting.member();
        self.out.extend_from_slice(b"<member><name>");
        escape_into(&mut self.out, name);
        self.out.extend_from_slice(b"</name>");
    }

    fn end_struct(&mut self) {
        self.out.extend_from_slice(b"</struct></value>");
        self.nesting.close(true);
        self.after_value();
    }

    fn encoded(&mut self, v: &EncodedValue) {
        self.nesting.before_value();
        encode_encoded(&mut self.out, v);
        self.after_value();
    }

    fn int_string(&mut self, i: i64) {
        // Digits and '-' never need escaping.
        self.nesting.before_value();
        self.out.extend_from_slice(b"<value>");
        push_i64(&mut self.out, i);
        self.out.extend_from_slice(b"</value>");
        self.after_value();
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Decodes a `<methodCall>` document.
pub fn decode_call(input: &[u8]) -> Result<Call, RpcError> {
    if let Some(call) = decode_plain_call(input) {
        return Ok(call);
    }
    decode_call_general(input)
}

/// The general parser behind [`decode_call`], for any document the plain path declines.
fn decode_call_general(input: &[u8]) -> Result<Call, RpcError> {
    let mut p = Parser::new(input);
    p.expect_open(Tag::MethodCall)?;
    p.expect_open(Tag::MethodName)?;
    let method = p.text_until_close(Tag::MethodName)?.trim().to_owned();
    // No XenAPI name contains control characters, and the encoder could not repeat them.
    if method.is_empty() || method.chars().any(char::is_control) {
        return Err(RpcError::Xml(format!("invalid methodName {method:?}")));
    }
    let mut params = Vec::new();
    match p.next_skip_ws()? {
        Tok::Open(Tag::Params) => {
            loop {
                match p.next_skip_ws()? {
                    Tok::Open(Tag::Param) => {
                        p.expect_open(Tag::Value)?;
                        params.push(p.value_body(0)?);
                        p.expect_close(Tag::Param)?;
                    }
                    Tok::Close(Tag::Params) => break,
                    t => return Err(p.unexpected(&t, "<param> or </params>")),
                }
            }
            p.expect_close(Tag::MethodCall)?;
        }
        Tok::Close(Tag::MethodCall) => {}
        t => return Err(p.unexpected(&t, "<params> or </methodCall>")),
    }
    Ok(Call { method, params })
}

// ---------------------------------------------------------------------------------------
// The plain path: calls as nearly every client writes them

/// Decodes the common shape of a call without the general parser: an optional plain XML
/// declaration, `<methodName>`, and parameters that are all strings (bare or in
/// `<string>`), with whitespace allowed between elements as `xmlrpc.client` puts it. Text
/// must hold no entity, CDATA or carriage return. Anything else (typed values, comments,
/// attributes, errors of any kind) returns `None`, and the general parser decides, so the
/// result is always the one the general parser would give.
///
/// Nearly every call a server gets is of this shape (refs, UUIDs, names), and the general
/// parser costs several times the rest of a small read.
fn decode_plain_call(input: &[u8]) -> Option<Call> {
    let mut c = Cursor(input);
    if !c.eat(b"<?xml version=\"1.0\"?>") {
        let _ = c.eat(b"<?xml version='1.0'?>");
    }
    c.skip_ws();
    if !(c.eat(b"<methodCall>") && c.skip_ws() && c.eat(b"<methodName>")) {
        return None;
    }
    let method = c.text()?.trim();
    if method.is_empty() || method.chars().any(char::is_control) || !c.eat(b"</methodName>") {
        return None;
    }
    c.skip_ws();
    let mut params = Vec::new();
    if c.eat(b"<params>") {
        loop {
            c.skip_ws();
            if c.eat(b"</params>") {
                break;
            }
            if !(c.eat(b"<param>") && c.skip_ws() && c.eat(b"<value>")) {
                return None;
            }
            let text = if c.eat(b"<string>") {
                let t = c.text()?;
                if !c.eat(b"</string>") {
                    return None;
                }
                t
            } else {
                c.text()?
            };
            if !(c.eat(b"</value>") && c.skip_ws() && c.eat(b"</param>")) {
                return None;
            }
            params.push(Value::String(text.to_owned()));
        }
        c.skip_ws();
    }
    // As in the general parser, whatever follows the closing tag is not looked at.
    c.eat(b"</methodCall>").then(|| Call {
        method: method.to_owned(),
        params,
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// Consumes `token` if the input starts with it.
    fn eat(&mut self, token: &[u8]) -> bool {
        match self.0.strip_prefix(token) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    /// Skips whitespace; always true, to chain with `eat`.
    fn skip_ws(&mut self) -> bool {
        let n = self
            .0
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        self.0 = &self.0[n..];
        true
    }

    /// Character data up to the next `<`, if it is plain: valid UTF-8 with no entity and
    /// no carriage return (which a parser may rewrite).
    fn text(&mut self) -> Option<&'a str> {
        let end = self.0.iter().position(|&b| b == b'<')?;
        let (text, rest) = self.0.split_at(end);
        if text.iter().any(|&b| matches!(b, b'&' | b'\r')) {
            return None;
        }
        self.0 = rest;
        std::str::from_utf8(text).ok()
    }
}

/// The body of a `<methodResponse>` before the XenAPI envelope is interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum RawResponse {
    /// `<params><param>value</param></params>`.
    Params(Value),
    /// `<fault>value</fault>` (plain XML-RPC; xapi itself never sends one).
    Fault(Value),
}

/// Decodes a `<methodResponse>` document without looking inside the value.
pub fn decode_raw_response(input: &[u8]) -> Result<RawResponse, RpcError> {
    let mut p = Parser::new(input);
    p.expect_open(Tag::MethodResponse)?;
    let out = match p.next_skip_ws()? {
        Tok::Open(Tag::Params) => {
            p.expect_open(Tag::Param)?;
            p.expect_open(Tag::Value)?;
            let v = p.value_body(0)?;
            p.expect_close(Tag::Param)?;
            p.expect_close(Tag::Params)?;
            RawResponse::Params(v)
        }
        Tok::Open(Tag::Fault) => {
            p.expect_open(Tag::Value)?;
            let v = p.value_body(0)?;
            p.expect_close(Tag::Fault)?;
            RawResponse::Fault(v)
        }
        t => return Err(p.unexpected(&t, "<params> or <fault>")),
    };
    p.expect_close(Tag::MethodResponse)?;
    Ok(out)
}

/// Decodes a `<methodResponse>` and interprets the XenAPI envelope: `Ok(Ok(value))` on
/// `Status = Success`, `Ok(Err(failure))` on `Status = Failure`. A value without the
/// envelope (as `system.listMethods` returns) is passed through as a success.
pub fn decode_response(input: &[u8]) -> Result<Result<Value, XenApiError>, RpcError> {
    match decode_raw_response(input)? {
        RawResponse::Params(v) => Ok(unwrap_envelope(v)),
        RawResponse::Fault(v) => {
            let text = |name| v.get(name).and_then(Value::scalar_text).unwrap_or_default();
            // ocaml-rpc's spelling of a plain XML-RPC fault.
            Ok(Err(XenApiError::new(
                "fault",
                [text("faultCode"), text("faultString")],
            )))
        }
    }
}

fn unwrap_envelope(v: Value) -> Result<Value, XenApiError> {
    let Value::Struct(members) = v else {
        return Ok(v);
    };
    let status = members
        .iter()
        .find(|(k, _)| k == "Status")
        .and_then(|(_, v)| v.as_str());
    match status {
        Some("Success") if members.iter().any(|(k, _)| k == "Value") => {
            let value = members
                .into_iter()
                .find(|(k, _)| k == "Value")
                .map_or(Value::Nil, |(_, v)| v);
            Ok(value)
        }
        Some("Failure") => {
            let desc = members
                .iter()
                .find(|(k, _)| k == "ErrorDescription")
                .map(|(_, v)| v);
            Err(error_from_description(desc))
        }
        _ => Ok(Value::Struct(members)),
    }
}

/// Builds a failure from an `ErrorDescription` value, rendering non-string scalars as text.
pub(crate) fn error_from_description(desc: Option<&Value>) -> XenApiError {
    match desc {
        Some(Value::Array(items)) => XenApiError::from_description(
            items
                .iter()
                .map(|i| i.scalar_text().unwrap_or_default())
                .collect(),
        ),
        _ => XenApiError::internal_error("failure without an ErrorDescription list"),
    }
}

/// Decodes a lone `<value>…</value>` fragment.
pub fn decode_value(input: &[u8]) -> Result<Value, RpcError> {
    let mut p = Parser::new(input);
    p.expect_open(Tag::Value)?;
    p.value_body(0)
}

#[derive(Debug, Clone, PartialEq)]
enum Tag {
    MethodCall,
    MethodName,
    MethodResponse,
    Params,
    Param,
    Fault,
    Value,
    String,
    Int,
    Boolean,
    Double,
    DateTime,
    Base64,
    Nil,
    Array,
    Data,
    Struct,
    Member,
    Name,
    Other(String),
}

impl Tag {
    fn from_local(name: &[u8]) -> Tag {
        match name {
            b"methodCall" => Tag::MethodCall,
            b"methodName" => Tag::MethodName,
            b"methodResponse" => Tag::MethodResponse,
            b"params" => Tag::Params,
            b"param" => Tag::Param,
            b"fault" => Tag::Fault,
            b"value" => Tag::Value,
            b"string" => Tag::String,
            b"int" | b"i4" | b"i8" => Tag::Int,
            b"boolean" => Tag::Boolean,
            b"double" => Tag::Double,
            b"dateTime.iso8601" => Tag::DateTime,
            b"base64" => Tag::Base64,
            b"nil" => Tag::Nil,
            b"array" => Tag::Array,
            b"data" => Tag::Data,
            b"struct" => Tag::Struct,
            b"member" => Tag::Member,
            b"name" => Tag::Name,
            other => Tag::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

#[derive(Debug)]
enum Tok<'a> {
    Open(Tag),
    Close(Tag),
    Text(Cow<'a, str>),
    Eof,
}

struct Parser<'a> {
    reader: Reader<&'a [u8]>,
    peeked: Option<Tok<'a>>,
}

fn is_ws(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut reader = Reader::from_reader(input);
        let config = reader.config_mut();
        config.expand_empty_elements = true;
        config.trim_text(false);
        config.check_end_names = true;
        Parser {
            reader,
            peeked: None,
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> RpcError {
        RpcError::Xml(format!(
            "{what} (at byte {})",
            self.reader.buffer_position()
        ))
    }

    fn unexpected(&self, got: &Tok<'_>, wanted: &str) -> RpcError {
        let got = match got {
            Tok::Open(t) => format!("<{t:?}>"),
            Tok::Close(t) => format!("</{t:?}>"),
            Tok::Text(_) => "text".to_owned(),
            Tok::Eof => "end of document".to_owned(),
        };
        self.err(format_args!("expected {wanted}, found {got}"))
    }

    /// One token from quick-xml, ignoring declarations, comments and processing
    /// instructions; text is not yet merged.
    fn next_event(&mut self) -> Result<Tok<'a>, RpcError> {
        loop {
            let ev = self.reader.read_event().map_err(|e| self.err(e))?;
            return Ok(match ev {
                Event::Start(e) => Tok::Open(Tag::from_local(e.local_name().as_ref())),
                Event::End(e) => Tok::Close(Tag::from_local(e.local_name().as_ref())),
                Event::Text(t) => Tok::Text(t.unescape().map_err(|e| self.err(e))?),
                Event::CData(c) => match c.into_inner() {
                    Cow::Borrowed(b) => Tok::Text(Cow::Borrowed(
                        std::str::from_utf8(b).map_err(|e| self.err(e))?,
                    )),
                    Cow::Owned(b) => {
                        Tok::Text(Cow::Owned(String::from_utf8(b).map_err(|e| self.err(e))?))
                    }
                },
                Event::Eof => Tok::Eof,
                // Empty elements are expanded by the reader configuration; the rest carries
                // nothing XML-RPC uses.
                Event::Empty(_)
                | Event::Decl(_)
                | Event::PI(_)
                | Event::Comment(_)
                | Event::DocType(_) => continue,
            });
        }
    }

    /// The next token, with adjacent text pieces (split by CDATA or comments) merged.
    fn next_raw(&mut self) -> Result<Tok<'a>, RpcError> {
        let tok = match self.peeked.take() {
            Some(t) => t,
            None => self.next_event()?,
        };
        let Tok::Text(mut text) = tok else {
            return Ok(tok);
        };
        loop {
            match self.next_event()? {
                Tok::Text(more) => text.to_mut().push_str(&more),
                other => {
                    self.peeked = Some(other);
                    return Ok(Tok::Text(text));
                }
            }
        }
    }

    /// The next token that is not whitespace-only text.
    fn next_skip_ws(&mut self) -> Result<Tok<'a>, RpcError> {
        loop {
            match self.next_raw()? {
                Tok::Text(t) if is_ws(&t) => continue,
                t => return Ok(t),
            }
        }
    }

    fn expect_open(&mut self, tag: Tag) -> Result<(), RpcError> {
        match self.next_skip_ws()? {
            Tok::Open(t) if t == tag => Ok(()),
            t => Err(self.unexpected(&t, &format!("<{tag:?}>"))),
        }
    }

    fn expect_close(&mut self, tag: Tag) -> Result<(), RpcError> {
        match self.next_skip_ws()? {
            Tok::Close(t) if t == tag => Ok(()),
            t => Err(self.unexpected(&t, &format!("</{tag:?}>"))),
        }
    }

    /// Text content up to the closing tag (empty if the element is empty).
    fn text_until_close(&mut self, tag: Tag) -> Result<Cow<'a, str>, RpcError> {
        match self.next_raw()? {
            Tok::Close(t) if t == tag => Ok(Cow::Borrowed("")),
            Tok::Text(s) => {
                self.expect_close(tag)?;
                Ok(s)
            }
            t => Err(self.unexpected(&t, "text")),
        }
    }

    /// Parses what follows an opening `<value>`, through its `</value>`.
    fn value_body(&mut self, depth: usize) -> Result<Value, RpcError> {
        let v = match self.next_raw()? {
            Tok::Close(Tag::Value) => return Ok(Value::String(String::new())),
            Tok::Text(s) => match self.next_raw()? {
                Tok::Close(Tag::Value) => return Ok(Value::String(s.into_owned())),
                Tok::Open(tag) if is_ws(&s) => self.typed(tag, depth)?,
                t => return Err(self.unexpected(&t, "</value>")),
            },
            Tok::Open(tag) => self.typed(tag, depth)?,
            t => return Err(self.unexpected(&t, "a value")),
        };
        self.expect_close(Tag::Value)?;
        Ok(v)
    }

    /// Parses a typed element whose opening tag was just read, through its closing tag.
    fn typed(&mut self, tag: Tag, depth: usize) -> Result<Value, RpcError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("values nested too deeply"));
        }
        Ok(match tag {
            Tag::String => Value::String(self.text_until_close(Tag::String)?.into_owned()),
            Tag::Int => {
                let t = self.text_until_close(Tag::Int)?;
                let t = t.trim();
                Value::Int(
                    t.parse()
                        .map_err(|_| self.err(format_args!("bad integer {t:?}")))?,
                )
            }
            Tag::Boolean => {
                let t = self.text_until_close(Tag::Boolean)?;
                match t.trim() {
                    "1" | "true" => Value::Bool(true),
                    "0" | "false" => Value::Bool(false),
                    other => return Err(self.err(format_args!("bad boolean {other:?}"))),
                }
            }
            Tag::Double => {
                let t = self.text_until_close(Tag::Double)?;
                let t = t.trim();
                Value::Double(
                    t.parse()
                        .map_err(|_| self.err(format_args!("bad double {t:?}")))?,
                )
            }
            Tag::DateTime => Value::DateTime(self.text_until_close(Tag::DateTime)?.into_owned()),
            // XenAPI never sends base64; keep the encoded text rather than guess a charset.
            Tag::Base64 => Value::String(self.text_until_close(Tag::Base64)?.into_owned()),
            Tag::Nil => {
                self.expect_close(Tag::Nil)?;
                Value::Nil
            }
            Tag::Array => {
                let mut items = Vec::new();
                match self.next_skip_ws()? {
                    Tok::Open(Tag::Data) => loop {
                        match self.next_skip_ws()? {
                            Tok::Open(Tag::Value) => items.push(self.value_body(depth + 1)?),
                            Tok::Close(Tag::Data) => break,
                            t => return Err(self.unexpected(&t, "<value> or </data>")),
                        }
                    },
                    // `<array/>` without `<data>`: seen from hand-written clients.
                    Tok::Close(Tag::Array) => return Ok(Value::Array(items)),
                    t => return Err(self.unexpected(&t, "<data>")),
                }
                self.expect_close(Tag::Array)?;
                Value::Array(items)
            }
            Tag::Struct => {
                let mut members = Vec::new();
                loop {
                    match self.next_skip_ws()? {
                        Tok::Open(Tag::Member) => members.push(self.member(depth + 1)?),
                        Tok::Close(Tag::Struct) => break,
                        t => return Err(self.unexpected(&t, "<member> or </struct>")),
                    }
                }
                Value::Struct(members)
            }
            other => return Err(self.err(format_args!("unknown value type <{other:?}>"))),
        })
    }

    fn member(&mut self, depth: usize) -> Result<(String, Value), RpcError> {
        let mut name = None;
        let mut value = None;
        loop {
            match self.next_skip_ws()? {
                Tok::Open(Tag::Name) if name.is_none() => {
                    name = Some(self.text_until_close(Tag::Name)?.into_owned());
                }
                Tok::Open(Tag::Value) if value.is_none() => value = Some(self.value_body(depth)?),
                Tok::Close(Tag::Member) => break,
                t => return Err(self.unexpected(&t, "<name>, <value> or </member>")),
            }
        }
        match (name, value) {
            (Some(n), Some(v)) => Ok((n, v)),
            _ => Err(self.err("struct member without a name or a value")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn escapes_and_drops_control_characters() {
        let mut out = Vec::new();
        escape_into(&mut out, "a<b>&\"c\"\r\n\t\u{1}é");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a&lt;b&gt;&amp;\"c\"&#13;\n\té"
        );
        // Every position of a special byte inside and across 8-byte words.
        for len in 0..20 {
            for pos in 0..len {
                for (special, expected) in [
                    ("<", "&lt;"),
                    ("&", "&amp;"),
                    ("\u{7}", ""),
                    ("\r", "&#13;"),
                ] {
                    let mut text = "x".repeat(len);
                    text.replace_range(pos..pos + 1, special);
                    let mut out = Vec::new();
                    escape_into(&mut out, &text);
                    let want =
                        format!("{}{expected}{}", "x".repeat(pos), "x".repeat(len - pos - 1));
                    assert_eq!(String::from_utf8(out).unwrap(), want);
                }
            }
        }
    }

    /// Calls of the plain shape in the layouts clients use, and near misses of it.
    fn call_layouts(method: &str, params: &[String]) -> Vec<Vec<u8>> {
        let wire: Vec<Value> = params.iter().map(|p| Value::from(p.as_str())).collect();
        let compact = String::from_utf8(encode_call(method, &wire)).unwrap();
        let tagged = compact
            .replace("<value>", "<value><string>")
            .replace("</value>", "</string></value>");
        let python = tagged
            .replace("<?xml version=\"1.0\"?>", "<?xml version='1.0'?>\n")
            .replace("><", ">\n<")
            .replace(">\n<string>", "><string>")
            .replace("</string>\n<", "</string><");
        let out = vec![
            compact.clone(),
            tagged,
            python.clone(),
            python.replace('\n', "\r\n"),
            compact.replace("<?xml version=\"1.0\"?>", ""),
            compact.replace("<params>", "<params/>"),
            compact.replace("<value>", "<value> "),
            compact
                .replace("<value>", "<value> <string>")
                .replace("</value>", "</string> </value>"),
            compact.replace("</methodCall>", "</methodCall>trailing<"),
            compact.replace("<methodName>", "<methodName> \u{a0}"),
            compact.replace("<param>", "<!-- c --><param>"),
            compact.replace("</params>", ""),
            compact.replace("</methodName>", "</methodname>"),
        ];
        let mut out: Vec<Vec<u8>> = out.into_iter().map(String::into_bytes).collect();
        let whole = compact.as_bytes();
        out.extend((0..whole.len()).step_by(7).map(|i| whole[..i].to_vec()));
        out
    }

    fn same_as_general(input: &[u8]) {
        if let Some(plain) = decode_plain_call(input) {
            assert_eq!(
                Ok(plain),
                decode_call_general(input).map_err(|e| e.to_string()),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn plain_path_takes_the_common_layouts() {
        let params = ["OpaqueRef:1".to_string(), String::new(), " x ".to_string()];
        let layouts = call_layouts("VM.get_record", &params);
        for doc in &layouts[..3] {
            assert!(
                decode_plain_call(doc).is_some(),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        for doc in &layouts {
            same_as_general(doc);
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_path_agrees_with_the_general_parser(
            method in "[ \\PC]{0,12}",
            params in proptest::collection::vec("[\\PC\t\r\n\u{1}<>&]{0,12}", 0..4),
        ) {
            for doc in call_layouts(&method, &params) {
                same_as_general(&doc);
            }
        }

        #[test]
        fn plain_path_agrees_on_any_bytes(bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::sample::select(b"<>/ \n\r&value".to_vec()),
            ],
            0..200,
        )) {
            same_as_general(&bytes);
        }
    }

    #[test]
    fn response_pieces_make_the_response() {
        let mut w = XmlWriter::new();
        w.begin_struct();
        w.member("a<");
        w.string("x&y");
        w.end_struct();
        let encoded = Value::Encoded(w.finish().unwrap());
        let plain = Value::structure([("a<", Value::from("x&y"))]);
        let results = [
            Ok(encoded),
            Ok(plain),
            Ok(Value::Int(3)),
            Err(XenApiError::new("HANDLE_INVALID", ["VM", "OpaqueRef:x"])),
        ];
        for result in results {
            let whole = encode_response(&result);
            let pieces = response_pieces(result).concat();
            assert_eq!(
                String::from_utf8(pieces).unwrap(),
                String::from_utf8(whole).unwrap()
            );
        }
    }

    #[test]
    fn integers_format() {
        for i in [0, 1, -1, 42, i64::MIN, i64::MAX, i32::MAX as i64 + 1] {
            let mut out = Vec::new();
            push_i64(&mut out, i);
            assert_eq!(String::from_utf8(out).unwrap(), i.to_string());
        }
    }
}
