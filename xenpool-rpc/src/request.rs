//! Decoded calls and their typed reading.
//!
//! A [`Call`] is what either codec produces; a [`Request`] splits its method name into
//! `Async.`, class and message; a [`ParamReader`] takes positional parameters one by one
//! with the errors xapi gives for a wrong count or a wrong type. Nothing here knows which
//! classes or messages exist: that is the caller's business.

use crate::error::XenApiError;
use crate::value::Value;

/// A decoded call: method name and positional parameters, as on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The full wire name, e.g. `Async.VM.start` or `session.login_with_password`.
    pub method: String,
    /// Positional parameters; for most XenAPI calls the first is the session reference.
    pub params: Vec<Value>,
}

impl Call {
    /// A call with this name and parameters.
    pub fn new(method: impl Into<String>, params: Vec<Value>) -> Self {
        Call {
            method: method.into(),
            params,
        }
    }

    /// Splits the method name; see [`Request::parse`].
    pub fn into_request(self) -> Result<Request, XenApiError> {
        Request::parse(self)
    }
}

/// A call with its method name split into its XenAPI parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Whether the name started with `Async.` (the caller wants a task back).
    pub is_async: bool,
    /// The class as written on the wire, e.g. `VM`, `session`, `system`.
    pub class: String,
    /// The message, e.g. `start`, `get_record`, `login_with_password`.
    pub message: String,
    /// The full wire name, kept for error parameters.
    pub method: String,
    /// Positional parameters.
    pub params: Vec<Value>,
}

impl Request {
    /// Splits `[Async.]<class>.<message>`. A name without a class or message is
    /// `MESSAGE_METHOD_UNKNOWN`.
    pub fn parse(call: Call) -> Result<Request, XenApiError> {
        let (is_async, rest) = match call.method.strip_prefix("Async.") {
            Some(rest) => (true, rest),
            None => (false, call.method.as_str()),
        };
        let Some((class, message)) = rest.split_once('.') else {
            return Err(XenApiError::method_unknown(&call.method));
        };
        if class.is_empty() || message.is_empty() || message.contains('.') {
            return Err(XenApiError::method_unknown(&call.method));
        }
        Ok(Request {
            is_async,
            class: class.to_owned(),
            message: message.to_owned(),
            params: call.params,
            method: call.method,
        })
    }

    /// The first parameter as a session reference. Its absence or a non-string is
    /// `SESSION_INVALID`, as xapi answers a call that carries no usable session.
    pub fn session_ref(&self) -> Result<&str, XenApiError> {
        match self.params.first() {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(XenApiError::session_invalid(
                &other.scalar_text().unwrap_or_default(),
            )),
            None => Err(XenApiError::session_invalid("")),
        }
    }

    /// A reader over all parameters that insists on exactly `expected` of them.
    pub fn reader(&self, expected: usize) -> Result<ParamReader<'_>, XenApiError> {
        ParamReader::new(&self.method, &self.params, expected, expected)
    }

    /// A reader that accepts between `min` and `max` parameters (trailing ones optional,
    /// as in `session.login_with_password(uname, pwd[, version[, originator]])`).
    pub fn reader_range(&self, min: usize, max: usize) -> Result<ParamReader<'_>, XenApiError> {
        ParamReader::new(&self.method, &self.params, min, max)
    }
}

/// Takes positional parameters in order, converting each to the type the caller wants.
#[derive(Debug)]
pub struct ParamReader<'a> {
    method: &'a str,
    params: &'a [Value],
    next: usize,
}

impl<'a> ParamReader<'a> {
    /// Checks the count (`MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`,
    /// reporting `max` as expected) and starts at the first parameter.
    pub fn new(
        method: &'a str,
        params: &'a [Value],
        min: usize,
        max: usize,
    ) -> Result<Self, XenApiError> {
        if params.len() < min || params.len() > max {
            return Err(XenApiError::parameter_count_mismatch(
                method,
                max,
                params.len(),
            ));
        }
        Ok(ParamReader {
            method,
            params,
            next: 0,
        })
    }

    /// How many parameters are left.
    pub fn remaining(&self) -> usize {
        self.params.len().saturating_sub(self.next)
    }

    /// The next parameter as it is, or `None` past the end.
    pub fn optional(&mut self) -> Option<&'a Value> {
        let v = self.params.get(self.next)?;
        self.next += 1;
        Some(v)
    }

    /// The next parameter as it is. Reading past the end (a caller that declared fewer
    /// parameters than it reads) is a count mismatch.
    pub fn value(&mut self) -> Result<&'a Value, XenApiError> {
        self.optional().ok_or_else(|| {
            XenApiError::parameter_count_mismatch(self.method, self.next + 1, self.params.len())
        })
    }

    /// The next parameter as a string (refs, UUIDs, names).
    pub fn string(&mut self, name: &str) -> Result<&'a str, XenApiError> {
        match self.value()? {
            Value::String(s) => Ok(s),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as an integer. xapi sends 64-bit integers as decimal strings and
    /// clients echo them back that way, so both forms are accepted.
    pub fn int(&mut self, name: &str) -> Result<i64, XenApiError> {
        match self.value()? {
            Value::Int(i) => Ok(*i),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| XenApiError::field_type_error(name)),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as a float (ints and decimal strings widen).
    pub fn float(&mut self, name: &str) -> Result<f64, XenApiError> {
        match self.value()? {
            Value::Double(d) => Ok(*d),
            Value::Int(i) => Ok(*i as f64),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| XenApiError::field_type_error(name)),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as a boolean (`true`/`false` strings are accepted, as the CLI
    /// and some SDKs send them).
    pub fn bool(&mut self, name: &str) -> Result<bool, XenApiError> {
        match self.value()? {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as an array.
    pub fn array(&mut self, name: &str) -> Result<&'a [Value], XenApiError> {
        match self.value()? {
            Value::Array(a) => Ok(a),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as a struct (maps and records).
    pub fn structure(&mut self, name: &str) -> Result<&'a [(String, Value)], XenApiError> {
        match self.value()? {
            Value::Struct(m) => Ok(m),
            _ => Err(XenApiError::field_type_error(name)),
        }
    }

    /// The next parameter as a `string -> string` map (xapi's `other_config` and friends).
    pub fn string_map(&mut self, name: &str) -> Result<Vec<(&'a str, &'a str)>, XenApiError> {
        self.structure(name)?
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.as_str(), s.as_str())),
                _ => Err(XenApiError::field_type_error(name)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(method: &str, params: Vec<Value>) -> Result<Request, XenApiError> {
        Request::parse(Call::new(method, params))
    }

    #[test]
    fn splits_method_names() {
        let r = req("Async.VM.start", vec![]).unwrap();
        assert!(r.is_async);
        assert_eq!((r.class.as_str(), r.message.as_str()), ("VM", "start"));
        let r = req("session.login_with_password", vec![]).unwrap();
        assert!(!r.is_async);
        assert_eq!(r.class, "session");
        let r = req("system.listMethods", vec![]).unwrap();
        assert_eq!(
            (r.class.as_str(), r.message.as_str()),
            ("system", "listMethods")
        );
        for bad in ["VM", "Async.VM", ".start", "VM.", "Async.", "a.b.c"] {
            assert_eq!(
                req(bad, vec![]).unwrap_err(),
                XenApiError::method_unknown(bad)
            );
        }
    }

    #[test]
    fn reader_counts_and_types() {
        let r = req(
            "VM.set_memory",
            vec![
                Value::from("OpaqueRef:s"),
                Value::from("1024"),
                Value::Int(7),
            ],
        )
        .unwrap();
        assert_eq!(r.session_ref().unwrap(), "OpaqueRef:s");
        assert_eq!(
            r.reader(2).unwrap_err().params,
            vec!["VM.set_memory", "2", "3"]
        );
        let mut p = r.reader(3).unwrap();
        assert_eq!(p.string("session_id").unwrap(), "OpaqueRef:s");
        assert_eq!(p.int("value").unwrap(), 1024);
        assert_eq!(p.int("other").unwrap(), 7);
        assert_eq!(p.remaining(), 0);
        let mut p = r.reader(3).unwrap();
        assert_eq!(
            p.int("session_id").unwrap_err(),
            XenApiError::field_type_error("session_id")
        );
        assert!(req("VM.get_all", vec![]).unwrap().session_ref().is_err());
    }

    #[test]
    fn optional_trailing_parameters() {
        let r = req(
            "session.login_with_password",
            vec![Value::from("root"), Value::from("pw")],
        )
        .unwrap();
        let mut p = r.reader_range(2, 4).unwrap();
        assert_eq!(p.string("uname").unwrap(), "root");
        assert_eq!(p.string("pwd").unwrap(), "pw");
        assert!(p.optional().is_none());
        assert_eq!(
            r.reader_range(3, 4).unwrap_err().params,
            vec!["session.login_with_password", "4", "2"]
        );
    }
}
