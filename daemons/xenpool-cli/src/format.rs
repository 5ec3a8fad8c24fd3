//! xe's record output: one `name ( RO): value` line per field, names with dashes, records
//! separated by blank lines.

use xenpool_rpc::Value;

/// A field as xe names it (`name_label` → `name-label`).
pub fn xe_name(field: &str) -> String {
    field.replace('_', "-")
}

/// A field as the datamodel names it (`name-label` → `name_label`).
pub fn field_name(xe: &str) -> String {
    xe.replace('-', "_")
}

/// A value as xe prints it: sets joined with `; `, maps as `k: v; k: v`.
pub fn wire_text(v: &Value) -> String {
    match v {
        Value::String(s) | Value::DateTime(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items.iter().map(wire_text).collect::<Vec<_>>().join("; "),
        Value::Struct(members) => members
            .iter()
            .map(|(k, v)| format!("{k}: {}", wire_text(v)))
            .collect::<Vec<_>>()
            .join("; "),
        Value::Nil => String::new(),
        // Only a server builds encoded values; decoded responses never hold one.
        Value::Encoded(e) => e.decode().map(|v| wire_text(&v)).unwrap_or_default(),
    }
}

/// A field's value as xe shows it (xe prints power states in lower case).
pub fn display_value(field: &str, v: &Value) -> String {
    let t = wire_text(v);
    if field == "power_state" {
        t.to_ascii_lowercase()
    } else {
        t
    }
}

/// The record's UUID.
pub fn uuid_of(fields: &[(String, Value)]) -> String {
    fields
        .iter()
        .find(|(n, _)| n == "uuid")
        .map(|(_, v)| wire_text(v))
        .unwrap_or_default()
}

/// A reference inside a task result (`<value>OpaqueRef:…</value>` or a bare string).
pub fn task_result_ref(v: &Value) -> String {
    let s = wire_text(v);
    let s = s.trim();
    let s = s.strip_prefix("<value>").unwrap_or(s);
    let s = s.strip_suffix("</value>").unwrap_or(s);
    s.to_string()
}

fn is_rw(field: &str) -> bool {
    matches!(
        field,
        "name_label"
            | "name_description"
            | "other_config"
            | "tags"
            | "affinity"
            | "order"
            | "start_delay"
            | "ha_restart_priority"
            | "ha_always_run"
            | "ha_host_failures_to_tolerate"
            | "ha_allow_overcommit"
    )
}

/// Prints records in xe's layout; `params` is `all`, a comma-separated list, or `None` for
/// the command's default fields.
pub fn print_records(
    rows: &[(String, Vec<(String, Value)>)],
    defaults: &[&str],
    params: Option<&str>,
) {
    for (_, fields) in rows {
        let chosen: Vec<(String, String)> = match params {
            Some("all") => fields
                .iter()
                .map(|(n, v)| (n.clone(), display_value(n, v)))
                .collect(),
            Some(list) => list
                .split(',')
                .map(|p| {
                    let name = field_name(p.trim());
                    let v = fields
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                        .map(|(n, v)| display_value(n, v))
                        .unwrap_or_else(|| "<not in database>".into());
                    (name, v)
                })
                .collect(),
            None => defaults
                .iter()
                .map(|d| {
                    let v = fields
                        .iter()
                        .find(|(n, _)| n == d)
                        .map(|(n, v)| display_value(n, v))
                        .unwrap_or_default();
                    ((*d).to_string(), v)
                })
                .collect(),
        };
        let labels: Vec<String> = chosen
            .iter()
            .map(|(n, _)| format!("{} ({})", xe_name(n), if is_rw(n) { "RW" } else { " RO" }))
            .collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0);
        for (i, (label, (_, value))) in labels.iter().zip(&chosen).enumerate() {
            if i == 0 {
                println!("{label:<width$}: {value}");
            } else {
                println!("{label:>width$}: {value}");
            }
        }
        println!("\n");
    }
}
