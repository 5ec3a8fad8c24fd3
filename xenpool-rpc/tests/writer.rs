//! Streaming writers and encoded values: a value written through a `ValueWriter` is byte
//! for byte what the codec writes for the equivalent `Value`, an encoded value spliced
//! into a response changes nothing, and the protocols never mix silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use xenpool_rpc::json::{self, JsonVersion};
use xenpool_rpc::{
    xml, EncodedValue, Encoding, JsonWriter, RpcError, Value, ValueWriter, XenApiError, XmlWriter,
};

/// Every kind of value, with text that needs escaping in both syntaxes (control
/// characters, `<&>`, quotes, backslashes, non-ASCII) and every kind of double.
fn any_value() -> impl Strategy<Value = Value> {
    let text = "[\\PC\\t\\n\\r\\u{1}\\u{1f}<>&\"'\\\\ ]{0,12}";
    let leaf = prop_oneof![
        text.prop_map(Value::String),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Double),
        Just(Value::Double(f64::NAN)),
        Just(Value::Double(f64::INFINITY)),
        Just(Value::Double(-0.0)),
        any::<bool>().prop_map(Value::Bool),
        "[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z".prop_map(Value::DateTime),
        Just(Value::Nil),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((text, inner), 0..6).prop_map(Value::Struct),
        ]
    })
}

fn xml_encoded(v: &Value) -> EncodedValue {
    let mut w = XmlWriter::new();
    w.value(v);
    w.finish().unwrap()
}

fn json_encoded(v: &Value) -> EncodedValue {
    let mut w = JsonWriter::with_capacity(16);
    w.value(v);
    w.finish().unwrap()
}

/// Replaces every second member value (or element) of containers by its encoding, so
/// encoded values are tested nested as well as at the top.
fn encode_inner(v: &Value, encode: &dyn Fn(&Value) -> EncodedValue) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if i % 2 == 0 {
                        Value::Encoded(encode(e))
                    } else {
                        encode_inner(e, encode)
                    }
                })
                .collect(),
        ),
        Value::Struct(members) => Value::Struct(
            members
                .iter()
                .enumerate()
                .map(|(i, (k, e))| {
                    let e = if i % 2 == 0 {
                        Value::Encoded(encode(e))
                    } else {
                        encode_inner(e, encode)
                    };
                    (k.clone(), e)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn xml_writer_matches_encode_value(v in any_value()) {
        let mut expected = Vec::new();
        xml::encode_value(&mut expected, &v);
        let encoded = xml_encoded(&v);
        prop_assert_eq!(encoded.encoding(), Encoding::Xml);
        prop_assert_eq!(encoded.as_bytes(), &expected[..]);
    }

    #[test]
    fn json_writer_matches_serde(v in any_value()) {
        let expected = serde_json::to_vec(&v).unwrap();
        let encoded = json_encoded(&v);
        prop_assert_eq!(encoded.encoding(), Encoding::Json);
        prop_assert_eq!(encoded.as_bytes(), &expected[..]);
    }

    #[test]
    fn encoded_responses_equal_plain_ones(v in any_value(), id in any::<i64>()) {
        let plain = xml::encode_response(&Ok(v.clone()));
        prop_assert_eq!(&xml::encode_response(&Ok(Value::Encoded(xml_encoded(&v)))), &plain);
        prop_assert_eq!(&xml::encode_response(&Ok(encode_inner(&v, &xml_encoded))), &plain);
        let id = Value::Int(id);
        for version in [JsonVersion::V1, JsonVersion::V2] {
            let plain = json::encode_response(version, &id, &Ok(v.clone()));
            let top = json::encode_response(version, &id, &Ok(Value::Encoded(json_encoded(&v))));
            prop_assert_eq!(&top, &plain);
            let nested = json::encode_response(version, &id, &Ok(encode_inner(&v, &json_encoded)));
            prop_assert_eq!(&nested, &plain);
        }
    }

    /// Outside responses (fragments, calls, serde) a value encoded for the other protocol
    /// is re-encoded: the result is what the decoded value would give.
    #[test]
    fn foreign_fragments_are_reencoded(v in any_value()) {
        let from_json = json_encoded(&v);
        let mut got = Vec::new();
        xml::encode_value(&mut got, &Value::Encoded(from_json.clone()));
        let mut want = Vec::new();
        xml::encode_value(&mut want, &from_json.decode().unwrap());
        prop_assert_eq!(got, want);

        let from_xml = xml_encoded(&v);
        let got = serde_json::to_vec(&Value::Encoded(from_xml.clone())).unwrap();
        let want = serde_json::to_vec(&from_xml.decode().unwrap()).unwrap();
        prop_assert_eq!(&got, &want);
        let mut w = JsonWriter::new();
        w.encoded(&from_xml);
        let rewritten = w.finish().unwrap();
        prop_assert_eq!(rewritten.as_bytes(), &want[..]);
    }
}

#[test]
fn a_record_written_field_by_field() {
    let mut w = XmlWriter::with_capacity(256);
    w.begin_struct();
    w.member("uuid");
    w.string("0b5e3c9a");
    w.member("memory_target");
    w.int_string(-4_294_967_296);
    w.member("VIFs");
    w.begin_array();
    w.string("OpaqueRef:a");
    w.string("OpaqueRef:b");
    w.end_array();
    w.member("other_config");
    w.begin_struct();
    w.end_struct();
    w.member("start_time");
    w.datetime("20261123T12:00:00Z");
    w.end_struct();
    let v = Value::structure([
        ("uuid", Value::from("0b5e3c9a")),
        ("memory_target", Value::from("-4294967296")),
        (
            "VIFs",
            Value::Array(vec![Value::from("OpaqueRef:a"), Value::from("OpaqueRef:b")]),
        ),
        ("other_config", Value::Struct(vec![])),
        ("start_time", Value::DateTime("20261123T12:00:00Z".into())),
    ]);
    let encoded = w.finish().unwrap();
    assert_eq!(encoded.decode().unwrap(), v);
    assert_eq!(encoded, xml_encoded(&v));

    let mut w = JsonWriter::new();
    w.begin_array();
    w.int_string(7);
    w.int(7);
    w.bool(true);
    w.nil();
    w.double(1.0);
    w.end_array();
    assert_eq!(
        w.finish().unwrap().as_bytes(),
        br#"["7",7,true,null,1.0]"#.as_slice()
    );
}

#[test]
fn mixed_protocols_answer_internal_error() {
    let v = Value::structure([("a", Value::Int(1))]);
    let internal = |r: Result<Value, XenApiError>| {
        let e = r.unwrap_err();
        assert_eq!(e.code, "INTERNAL_ERROR");
        e.params.join(" ")
    };

    let json_in_xml = Value::Array(vec![Value::Encoded(json_encoded(&v))]);
    let body = xml::encode_response(&Ok(json_in_xml.clone()));
    let msg = internal(xml::decode_response(&body).unwrap());
    assert!(msg.contains("JSON-RPC") && msg.contains("XML-RPC"), "{msg}");
    let body = xml::encode_raw_response(&json_in_xml);
    internal(xml::decode_response(&body).unwrap());

    let xml_in_json = Value::Encoded(xml_encoded(&v));
    for version in [JsonVersion::V1, JsonVersion::V2] {
        let body = json::encode_response(version, &Value::Int(3), &Ok(xml_in_json.clone()));
        internal(json::decode_response(&body).unwrap());
    }
    assert_eq!(
        xml_in_json.foreign_encoding(Encoding::Json),
        Some(Encoding::Xml)
    );
    assert_eq!(xml_in_json.foreign_encoding(Encoding::Xml), None);
}

#[test]
fn misuse_never_finishes() {
    fn check(f: impl Fn(&mut dyn ValueWriter)) {
        let mut x = XmlWriter::new();
        f(&mut x);
        assert!(matches!(x.finish(), Err(RpcError::WriterMisuse(_))));
        let mut j = JsonWriter::new();
        f(&mut j);
        assert!(matches!(j.finish(), Err(RpcError::WriterMisuse(_))));
    }
    check(|_| {});
    check(|w| w.begin_array());
    check(|w| {
        w.begin_array();
        w.end_struct();
    });
    check(|w| {
        w.begin_array();
        w.member("x");
        w.nil();
        w.end_array();
    });
    check(|w| {
        w.begin_struct();
        w.string("no name");
        w.end_struct();
    });
    check(|w| {
        w.begin_struct();
        w.member("a");
        w.end_struct();
    });
    check(|w| {
        w.begin_struct();
        w.member("a");
        w.member("b");
        w.nil();
        w.end_struct();
    });
    check(|w| {
        w.nil();
        w.nil();
    });
    check(|w| {
        w.nil();
        w.end_array();
    });
}
