//! Calls every class has, derived from the field metadata: `get_all`, `get_all_records`,
//! `get_record`, `get_by_uuid`, `get_by_name_label`, `get_<field>`, and for writable fields
//! `set_<field>`, `add_to_<map>`/`remove_from_<map>`, `add_<set>`/`remove_<set>`.

use xenpool_core::ops::{check_field_write, check_ha_restart_priority};
use xenpool_core::record::field_meta;
use xenpool_core::{Class, Database, FieldMeta, FieldType, Value};
use xenpool_rpc::{Request, Value as Wire, ValueWriter, XenApiError};

use super::{api_error, ref_param, Api, ApiResult, Ctx};
use crate::conv::{encode, from_wire, into_wire, write_object, Encode, IntStyle, RecordOf};

/// Where an encoded record's buffer starts: a VM record is about 7 KB in XML-RPC, most
/// other records are smaller, and one early allocation beats growing step by step.
const RECORD_BYTES: usize = 8 * 1024;

/// Every record of a class as `{ref: record}`, what `get_all_records` returns.
struct AllRecords<'a> {
    db: &'a Database,
    class: Class,
    ints: IntStyle,
}

impl Encode for AllRecords<'_> {
    fn encode<W: ValueWriter>(&self, w: &mut W) {
        w.begin_struct();
        for (r, o) in self.db.objects(self.class) {
            w.member(r.as_str());
            write_object(w, o, self.ints);
        }
        w.end_struct();
    }
}

impl Api {
    pub(super) fn generic(&self, cx: &Ctx, class: Class, req: &Request) -> ApiResult {
        let m = req.message.as_str();
        let state = &self.node().state;
        match m {
            "get_all" => {
                req.reader(1)?;
                let db = state.db();
                Ok(Wire::Array(
                    db.refs(class)
                        .map(|r| Wire::String(r.as_str().to_string()))
                        .collect(),
                ))
            }
            "get_all_records" => {
                req.reader(1)?;
                let db = state.db();
                let all = AllRecords {
                    db: &db,
                    class,
                    ints: cx.ints,
                };
                if cx.task.is_some() {
                    // A task keeps its result as XML-RPC text whatever the protocol: give
                    // it the plain tree.
                    return Ok(Wire::Struct(
                        db.objects(class)
                            .map(|(r, o)| {
                                (r.as_str().to_string(), into_wire(o.to_value(), cx.ints))
                            })
                            .collect(),
                    ));
                }
                // Records of most classes are a few KB; growing past the cap is cheap.
                let capacity = db
                    .objects(class)
                    .count()
                    .saturating_mul(2048)
                    .clamp(RECORD_BYTES, 4 << 20);
                encode(cx.encoding, capacity, &all)
            }
            "get_all_records_where" | "get_all_where" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let text = p.string("expr")?;
                let expr = xenpool_core::query::parse(text).map_err(|e| {
                    XenApiError::new("INVALID_VALUE", ["expr".to_string(), e.to_string()])
                })?;
                let db = state.db();
                let hits = db
                    .objects(class)
                    .filter(|(_, o)| xenpool_core::query::matches(&expr, o));
                Ok(if m == "get_all_where" {
                    Wire::Array(
                        hits.map(|(r, _)| Wire::String(r.as_str().to_string()))
                            .collect(),
                    )
                } else {
                    Wire::Struct(
                        hits.map(|(r, o)| {
                            (r.as_str().to_string(), into_wire(o.to_value(), cx.ints))
                        })
                        .collect(),
                    )
                })
            }
            "get_record" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let r = ref_param(&mut p, "self")?;
                let db = state.db();
                let o = db.object(class, &r).map_err(api_error)?;
                if cx.task.is_some() {
                    return Ok(into_wire(o.to_value(), cx.ints));
                }
                encode(cx.encoding, RECORD_BYTES, &RecordOf(o, cx.ints))
            }
            "get_by_uuid" => {
                let mut p = req.reader(2)?;
                p.value()?;
                let uuid = p.string("uuid")?;
                let db = state.db();
                let r = db.ref_by_uuid(class, uuid).map_err(api_error)?;
                Ok(Wire::String(r.as_str().to_string()))
            }
            "get_by_name_label" if field_meta(class.fields(), "name_label").is_some() => {
                let mut p = req.reader(2)?;
                p.value()?;
                let label = p.string("label")?;
                let db = state.db();
                Ok(Wire::Array(
                    db.objects(class)
                        .filter(|(_, o)| {
                            matches!(o.get_field("name_label"), Some(Value::String(s)) if s == label)
                        })
                        .map(|(r, _)| Wire::String(r.as_str().to_string()))
                        .collect(),
                ))
            }
            _ => self.field_call(cx, class, req),
        }
    }

    fn field_call(&self, cx: &Ctx, class: Class, req: &Request) -> ApiResult {
        let m = req.message.as_str();
        let unknown = || XenApiError::method_unknown(&req.method);
        let fields = class.fields();
        if let Some(name) = m.strip_prefix("get_") {
            let meta = field_meta(fields, name).ok_or_else(unknown)?;
            let mut p = req.reader(2)?;
            p.value()?;
            let r = ref_param(&mut p, "self")?;
            let db = self.node().state.db();
            let o = db.object(class, &r).map_err(api_error)?;
            let v = o.get_field(meta.name).ok_or_else(unknown)?;
            return Ok(into_wire(v, cx.ints));
        }
        // A method named like an edit of a field that has no such edit does not exist, as
        // in xapi: `MESSAGE_METHOD_UNKNOWN`, never a type error.
        let (kind, meta) = EDITS
            .iter()
            .find_map(|(prefix, kind)| {
                let name = m.strip_prefix(prefix)?;
                field_meta(fields, name)
                    .filter(|f| edit_applies(*kind, f))
                    .map(|f| (*kind, f))
            })
            .ok_or_else(unknown)?;
        let expected = match kind {
            Edit::MapAdd => 4,
            _ => 3,
        };
        let mut p = req.reader(expected)?;
        p.value()?;
        let r = ref_param(&mut p, "self")?;
        let args: Vec<Wire> = (1..expected - 1)
            .map(|_| p.value().cloned())
            .collect::<Result<_, _>>()?;
        let field = meta.name;
        let ty = meta.ty;
        if class == Class::VM && field == "ha_restart_priority" {
            // One path for the priority, whichever name the call came by: the specific
            // call checks the failover plan and keeps ha_always_run in step.
            let value = match from_wire(ty, args.first().unwrap_or(&Wire::Nil)) {
                Ok(Value::String(v)) => v,
                Ok(_) => String::new(),
                Err(e) => return Err(api_error(e)),
            };
            check_ha_restart_priority(&value).map_err(api_error)?;
            self.set_ha_restart_priority(&r, value, false)?;
            return Ok(Wire::String(String::new()));
        }
        let node = self.node();
        let mut refresh = false;
        node.state
            .write(|txn| {
                let current = txn.db().object(class, &r)?.get_field(field);
                let new = edit_value(kind, ty, current, &args)?;
                let effect = check_field_write(txn.db(), class, &r, field, &new)?;
                if let Some(static_max) = effect.static_max {
                    node.ha_check_change(txn.db(), false, |db, input| {
                        xenpool_ha::pool_input::resize_vm(db, input, &r, static_max);
                    })?;
                }
                refresh = effect.refresh_operations;
                txn.set_field(class, &r, field, new)?;
                if class == Class::VM && field == "memory_dynamic_max" {
                    // The balloon target follows the dynamic maximum, as set_memory_limits
                    // keeps it.
                    let target = txn.get::<xenpool_core::VmRecord>(&r)?.memory_dynamic_max;
                    txn.update::<xenpool_core::VmRecord>(&r, |v| v.memory_target = target)?;
                }
                Ok(())
            })
            .map_err(api_error)?;
        if refresh {
            self.refresh_vm(&r);
        }
        if class == Class::VM && field.starts_with("memory_") {
            node.ha_refresh();
        }
        Ok(Wire::String(String::new()))
    }
}

/// The edits a field may have, by method prefix, longest prefix first so `add_to_x` is
/// never read as `add_` of `to_x`.
const EDITS: &[(&str, Edit)] = &[
    ("set_", Edit::Set),
    ("add_to_", Edit::MapAdd),
    ("remove_from_", Edit::MapRemove),
    ("add_", Edit::SetAdd),
    ("remove_", Edit::SetRemove),
];

/// Whether the field has the edit: writable fields have `set_`, writable maps
/// `add_to_`/`remove_from_`, writable sets `add_`/`remove_`.
fn edit_applies(kind: Edit, f: &FieldMeta) -> bool {
    f.writable
        && match kind {
            Edit::Set => true,
            Edit::MapAdd | Edit::MapRemove => matches!(f.ty, FieldType::Map(..)),
            Edit::SetAdd | Edit::SetRemove => matches!(f.ty, FieldType::Set(..)),
        }
}

/// The generic messages of a class, as `generic` serves them, for `system.listMethods`.
pub(super) fn generic_messages(class: Class) -> Vec<String> {
    // As in xapi, the session class advertises no `get_all`/`get_all_records` (we still
    // answer them): Xen Orchestra's `xen-api` derives the classes it caches from the
    // `*.get_all_records` methods listed and refuses to call any `session.*` method itself.
    let whole: &[&str] = if class == Class::Session {
        &["get_record", "get_by_uuid"]
    } else {
        &[
            "get_all",
            "get_all_records",
            "get_all_records_where",
            "get_all_where",
            "get_record",
            "get_by_uuid",
        ]
    };
    let mut out: Vec<String> = whole.iter().map(|m| m.to_string()).collect();
    let fields = class.fields();
    if field_meta(fields, "name_label").is_some() {
        out.push("get_by_name_label".into());
    }
    for f in fields {
        out.push(format!("get_{}", f.name));
        for (prefix, kind) in EDITS {
            if edit_applies(*kind, f) {
                out.push(format!("{prefix}{}", f.name));
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    Set,
    MapAdd,
    MapRemove,
    SetAdd,
    SetRemove,
}

fn edit_value(
    kind: Edit,
    ty: FieldType,
    current: Option<Value>,
    args: &[Wire],
) -> Result<Value, xenpool_core::CoreError> {
    let bad = || xenpool_core::CoreError::FieldType {
        expected: ty.describe(),
        got: "a different kind of field".into(),
    };
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Wire::Nil);
    match (kind, ty) {
        (Edit::Set, _) => from_wire(ty, &arg(0)),
        (Edit::MapAdd, FieldType::Map(kt, vt)) => {
            let k = from_wire(*kt, &arg(0))?;
            let v = from_wire(*vt, &arg(1))?;
            let Some(Value::Map(mut pairs)) = current else {
                return Err(bad());
            };
            // xapi refuses to overwrite an existing key through add_to.
            if pairs.iter().any(|(pk, _)| *pk == k) {
                return Err(xenpool_core::CoreError::MapDuplicateKey {
                    map: ty.describe(),
                    key: format!("{k:?}"),
                });
            }
            pairs.push((k, v));
            Ok(Value::Map(pairs))
        }
        (Edit::MapRemove, FieldType::Map(kt, _)) => {
            let k = from_wire(*kt, &arg(0))?;
            let Some(Value::Map(mut pairs)) = current else {
                return Err(bad());
            };
            pairs.retain(|(pk, _)| *pk != k);
            Ok(Value::Map(pairs))
        }
        (Edit::SetAdd, FieldType::Set(it)) => {
            let v = from_wire(*it, &arg(0))?;
            let Some(Value::Set(mut items)) = current else {
                return Err(bad());
            };
            if !items.contains(&v) {
                items.push(v);
            }
            Ok(Value::Set(items))
        }
        (Edit::SetRemove, FieldType::Set(it)) => {
            let v = from_wire(*it, &arg(0))?;
            let Some(Value::Set(mut items)) = current else {
                return Err(bad());
            };
            items.retain(|i| *i != v);
            Ok(Value::Set(items))
        }
        _ => Err(bad()),
    }
}
