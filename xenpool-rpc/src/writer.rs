//! Streaming encoders: write a value straight to the bytes of one protocol, with no
//! [`Value`] tree in between.
//!
//! A handler that answers with large results (records, lists of records) walks its own
//! typed data through a [`ValueWriter`] — [`XmlWriter`](crate::xml::XmlWriter) or
//! [`JsonWriter`](crate::json::JsonWriter), picked by [`Protocol::encoding`] — and returns
//! the [`EncodedValue`] the writer finishes with as [`Value::Encoded`]. The server splices
//! those bytes into the response envelope.
//!
//! A writer produces exactly the bytes the codec produces for the equivalent [`Value`]
//! (`xml::encode_value`, the JSON mapping of [`Value`]), so a client cannot tell which path
//! a result took.
//!
//! [`Protocol::encoding`]: crate::server::Protocol::encoding

use crate::error::RpcError;
use crate::value::{EncodedValue, Value};

/// A sink for one value in one protocol, written depth first.
///
/// Containers are bracketed: `begin_array`, the elements, `end_array`; `begin_struct`,
/// then for each member `member(name)` followed by exactly one value, then `end_struct`.
/// A writer holds exactly one top-level value. Calls out of this order do not panic: the
/// writer notes the misuse and its `finish` fails, so a half-formed document never reaches
/// a peer.
pub trait ValueWriter {
    /// A string.
    fn string(&mut self, s: &str);
    /// An integer, as the protocol's integer type.
    fn int(&mut self, i: i64);
    /// A floating-point number.
    fn double(&mut self, d: f64);
    /// A boolean.
    fn bool(&mut self, b: bool);
    /// A timestamp in its wire text (`20261123T12:00:00Z`).
    fn datetime(&mut self, s: &str);
    /// Nil (`<nil/>`, `null`).
    fn nil(&mut self);
    /// Opens an array.
    fn begin_array(&mut self);
    /// Closes the innermost array.
    fn end_array(&mut self);
    /// Opens a struct.
    fn begin_struct(&mut self);
    /// Names the next member of the innermost struct; exactly one value follows.
    fn member(&mut self, name: &str);
    /// Closes the innermost struct.
    fn end_struct(&mut self);
    /// A value encoded earlier. One encoded for this writer's protocol is copied as is;
    /// one encoded for the other protocol is decoded and written again, which is correct
    /// but slow.
    fn encoded(&mut self, v: &EncodedValue);

    /// An integer as a decimal string, as xapi sends 64-bit integers in XML-RPC.
    fn int_string(&mut self, i: i64) {
        let mut buf = [0u8; 20];
        self.string(format_i64(&mut buf, i));
    }

    /// A whole [`Value`] tree.
    fn value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.string(s),
            Value::Int(i) => self.int(*i),
            Value::Double(d) => self.double(*d),
            Value::Bool(b) => self.bool(*b),
            Value::DateTime(s) => self.datetime(s),
            Value::Nil => self.nil(),
            Value::Array(items) => {
                self.begin_array();
                for i in items {
                    self.value(i);
                }
                self.end_array();
            }
            Value::Struct(members) => {
                self.begin_struct();
                for (k, e) in members {
                    self.member(k);
                    self.value(e);
                }
                self.end_struct();
            }
            Value::Encoded(e) => self.encoded(e),
        }
    }
}

/// The decimal text of `v` in `buf`; the one integer formatter of both codecs.
pub(crate) fn format_i64(buf: &mut [u8; 20], v: i64) -> &str {
    let mut n = v.unsigned_abs();
    let mut pos = buf.len();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        // i64::MIN has 19 digits, so there is always room for the sign.
        pos -= 1;
        buf[pos] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf[pos..]).unwrap_or("0")
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    is_struct: bool,
    has_items: bool,
    /// In a struct: a member name was written and its value has not been.
    awaiting_value: bool,
}

/// Where a writer is in the value: the open containers, whether the top-level value is
/// complete, and whether it was ever driven out of order. Shared by both writers.
#[derive(Debug, Default)]
pub(crate) struct Nesting {
    frames: Vec<Frame>,
    done: bool,
    misuse: Option<&'static str>,
}

impl Nesting {
    fn misuse(&mut self, what: &'static str) {
        self.misuse.get_or_insert(what);
    }

    /// Before a scalar or an opening bracket: whether it is an array element after the
    /// first (and needs a separator).
    pub(crate) fn before_value(&mut self) -> bool {
        match self.frames.last_mut() {
            None => {
                if self.done {
                    self.misuse("a second top-level value");
                }
                false
            }
            Some(f) if f.is_struct => {
                if !f.awaiting_value {
                    self.misuse("a struct member value without a name");
                } else {
                    f.awaiting_value = false;
                }
                false
            }
            Some(f) => std::mem::replace(&mut f.has_items, true),
        }
    }

    /// After a scalar or a closing bracket: whether the value just ended was a struct
    /// member (XML-RPC then closes the `<member>`).
    pub(crate) fn after_value(&mut self) -> bool {
        match self.frames.last() {
            None => {
                self.done = true;
                false
            }
            Some(f) => f.is_struct,
        }
    }

    /// After an opening bracket's `before_value`.
    pub(crate) fn open(&mut self, is_struct: bool) {
        self.frames.push(Frame {
            is_struct,
            has_items: false,
            awaiting_value: false,
        });
    }

    /// Before a closing bracket's `after_value`.
    pub(crate) fn close(&mut self, is_struct: bool) {
        match self.frames.pop() {
            Some(f) if f.is_struct == is_struct && !f.awaiting_value => {}
            Some(f) if f.is_struct != is_struct => self.misuse("mismatched closing bracket"),
            Some(_) => self.misuse("a struct member without a value"),
            None => self.misuse("a closing bracket with nothing open"),
        }
    }

    /// Before a member name: whether it follows another member (and needs a separator).
    pub(crate) fn member(&mut self) -> bool {
        match self.frames.last_mut() {
            Some(f) if f.is_struct && !f.awaiting_value => {
                f.awaiting_value = true;
                std::mem::replace(&mut f.has_items, true)
            }
            _ => {
                self.misuse("a member name outside a struct or without a value before it");
                false
            }
        }
    }

    /// Whether exactly one complete value was written, in order.
    pub(crate) fn finish(&self) -> Result<(), RpcError> {
        match self.misuse {
            Some(what) => Err(RpcError::WriterMisuse(what)),
            None if !self.done || !self.frames.is_empty() => {
                Err(RpcError::WriterMisuse("an incomplete value"))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn integers_format() {
        for i in [
            0,
            1,
            -1,
            42,
            -42,
            i64::MIN,
            i64::MAX,
            i64::from(i32::MAX) + 1,
        ] {
            let mut buf = [0u8; 20];
            assert_eq!(format_i64(&mut buf, i), i.to_string());
        }
    }

    #[test]
    fn nesting_catches_misuse() {
        let mut n = Nesting::default();
        assert!(n.finish().is_err());
        n.before_value();
        n.open(true);
        assert!(!n.member());
        n.before_value();
        n.after_value();
        assert!(n.member());
        n.close(true);
        n.after_value();
        assert!(matches!(
            n.finish(),
            Err(RpcError::WriterMisuse("a struct member without a value"))
        ));

        let mut n = Nesting::default();
        n.before_value();
        n.open(false);
        n.member();
        assert!(n.finish().is_err());

        let mut n = Nesting::default();
        n.before_value();
        n.after_value();
        n.before_value();
        assert!(n.finish().is_err());
    }
}
