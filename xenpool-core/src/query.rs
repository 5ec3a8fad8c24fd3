//! The record filters of `<class>.get_all_records_where` and `get_all_where`, in xapi's
//! expression language: `field "name__label"="x" and not (field "SR" = "OpaqueRef:…")`.
//!
//! Grammar, loosest first: `or`, `and`, `not`, then `true`, `false`, a parenthesised
//! expression, or a comparison `v = v` / `v <> v` where `v` is `field "<name>"` or a
//! string literal. Field names are those of xapi's database, where the datamodel's
//! namespaces join with a double underscore (`name__label` is `name_label`); both spellings
//! are accepted. Values compare as their string forms, as xapi's database stores them.

use crate::value::Value;
use crate::Object;

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Always true.
    True,
    /// Always false.
    False,
    /// Negation.
    Not(Box<Expr>),
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// The two sides have the same string form.
    Eq(Operand, Operand),
    /// The two sides differ.
    Ne(Operand, Operand),
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A field of the record, by its database name.
    Field(String),
    /// A string literal.
    Literal(String),
}

/// Why an expression was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the expression at byte {at}: {why}")]
pub struct QueryError {
    /// Where parsing stopped.
    pub at: usize,
    /// What was expected.
    pub why: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(String),
    Eq,
    Ne,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((i, Token::Open));
                i += 1;
            }
            b')' => {
                out.push((i, Token::Close));
                i += 1;
            }
            b'=' => {
                out.push((i, Token::Eq));
                i += 1;
            }
            b'<' if bytes.get(i + 1) == Some(&b'>') => {
                out.push((i, Token::Ne));
                i += 2;
            }
            b'"' => {
                let start = i;
                i += 1;
                let mut s = Vec::new();
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(QueryError {
                                at: start,
                                why: "a string without its closing quote",
                            })
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < bytes.len() => {
                            s.push(bytes[i + 1]);
                            i += 2;
                        }
                        Some(b) => {
                            s.push(*b);
                            i += 1;
                        }
                    }
                }
                // Split only at ASCII bytes, so the pieces are whole UTF-8.
                out.push((start, Token::Str(String::from_utf8_lossy(&s).into_owned())));
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((start, Token::Word(text[start..i].to_ascii_lowercase())));
            }
            _ => {
                return Err(QueryError {
                    at: i,
                    why: "a character outside the expression language",
                })
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn here(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn fail<T>(&self, why: &'static str) -> Result<T, QueryError> {
        Err(QueryError {
            at: self.here(),
            why,
        })
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.not()?;
        while self.is_word("and") {
            self.pos += 1;
            let right = self.not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, QueryError> {
        if self.is_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, QueryError> {
        match self.peek() {
            Some(Token::Open) => {
                self.pos += 1;
                let e = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return self.fail("a closing parenthesis");
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Token::Word(w)) if w == "true" => {
                self.pos += 1;
                Ok(Expr::True)
            }
            Some(Token::Word(w)) if w == "false" => {
                self.pos += 1;
                Ok(Expr::False)
            }
            _ => {
                let left = self.operand()?;
                let eq = match self.peek() {
                    Some(Token::Eq) => true,
                    Some(Token::Ne) => false,
                    _ => return self.fail("= or <>"),
                };
                self.pos += 1;
                let right = self.operand()?;
                Ok(if eq {
                    Expr::Eq(left, right)
                } else {
                    Expr::Ne(left, right)
                })
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        match self.peek().cloned() {
            Some(Token::Str(s)) => {
                self.pos += 1;
                Ok(Operand::Literal(s))
            }
            Some(Token::Word(w)) if w == "field" => {
                self.pos += 1;
                match self.peek().cloned() {
                    Some(Token::Str(name)) => {
                        self.pos += 1;
                        Ok(Operand::Field(name))
                    }
                    _ => self.fail("a quoted field name after `field`"),
                }
            }
            _ => self.fail("`field \"name\"` or a quoted string"),
        }
    }
}

/// Parses a filter expression.
pub fn parse(text: &str) -> Result<Expr, QueryError> {
    let mut p = Parser {
        tokens: tokenize(text)?,
        pos: 0,
        end: text.len(),
    };
    let e = p.or()?;
    if p.pos != p.tokens.len() {
        return p.fail("the end of the expression");
    }
    Ok(e)
}

/// A value as xapi's database keeps it: scalars as their wire text, sets and maps in the
/// database's s-expression form.
fn db_string(v: &Value) -> String {
    fn quote(s: &str) -> String {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    match v {
        Value::String(s) | Value::Enum(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::DateTime(d) => d.as_str().to_string(),
        Value::Ref(r) => r.as_str().to_string(),
        Value::Set(items) => {
            let inner: Vec<String> = items.iter().map(|i| quote(&db_string(i))).collect();
            format!("({})", inner.join(" "))
        }
        Value::Map(pairs) => {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("({} {})", quote(&db_string(k)), quote(&db_string(v))))
                .collect();
            format!("({})", inner.join(" "))
        }
        Value::Record(_) => String::new(),
    }
}

fn field_value(obj: &Object, name: &str) -> Option<String> {
    obj.get_field(name)
        .or_else(|| obj.get_field(&name.replace("__", "_")))
        .map(|v| db_string(&v))
}

fn operand_value(obj: &Object, o: &Operand) -> Option<String> {
    match o {
        Operand::Literal(s) => Some(s.clone()),
        Operand::Field(f) => field_value(obj, f),
    }
}

/// Whether `obj` passes the filter. A field the class lacks matches nothing, as a missing
/// column does in xapi's database.
pub fn matches(expr: &Expr, obj: &Object) -> bool {
    match expr {
        Expr::True => true,
        Expr::False => false,
        Expr::Not(e) => !matches(e, obj),
        Expr::And(a, b) => matches(a, obj) && matches(b, obj),
        Expr::Or(a, b) => matches(a, obj) || matches(b, obj),
        Expr::Eq(a, b) => match (operand_value(obj, a), operand_value(obj, b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        Expr::Ne(a, b) => match (operand_value(obj, a), operand_value(obj, b)) {
            (Some(x), Some(y)) => x != y,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Class, Ref};

    fn vm(label: &str, template: bool, host: &str) -> Object {
        let mut o = Class::VM.default_object();
        o.set_field("name_label", Value::String(label.into()))
            .expect("name_label");
        o.set_field("is_a_template", Value::Bool(template))
            .expect("is_a_template");
        o.set_field("resident_on", Value::Ref(Ref::from_string(host)))
            .expect("resident_on");
        o
    }

    #[test]
    fn what_openstack_asks() {
        let e = parse(
            r#"field "is_control_domain"="false" and field "is_a_template"="false" and field "resident_on"="OpaqueRef:h1""#,
        )
        .expect("parses");
        assert!(matches(&e, &vm("a", false, "OpaqueRef:h1")));
        assert!(!matches(&e, &vm("a", true, "OpaqueRef:h1")));
        assert!(!matches(&e, &vm("a", false, "OpaqueRef:h2")));
    }

    #[test]
    fn namespaced_names_spaces_and_precedence() {
        let e = parse(r#"field "name__label" = "x" or not (field "name_label"="y") and false"#)
            .expect("parses");
        // `and` binds tighter: x or (not(y) and false).
        assert!(matches(&e, &vm("x", false, "")));
        assert!(!matches(&e, &vm("z", false, "")));
        let e = parse(r#"field "name__label" <> "x""#).expect("parses");
        assert!(matches(&e, &vm("z", false, "")));
        assert!(!matches(&e, &vm("x", false, "")));
        assert!(matches(
            &parse("true").expect("parses"),
            &vm("x", false, "")
        ));
        assert!(!matches(
            &parse(r#"field "nope"="""#).expect("parses"),
            &vm("x", false, "")
        ));
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "",
            "field",
            r#"field "a""#,
            r#"field "a" = "b" and"#,
            r#"(field "a" = "b""#,
            r#""a" = "b" extra"#,
            r#"field "a" = "unterminated"#,
            "field 'a' = 'b'",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,64}") {
            let _ = parse(&text);
        }
    }
}
