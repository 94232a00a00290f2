//! Golden bodies and schema checks of the gateway tests.

use serde_json::Value;

/// Replaces values that change per run (ids, timestamps, worker identities) so a body can be compared with a
/// golden file.
pub(crate) fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "task_id" | "submitted_at" | "started_at" | "completed_at"
                        | "last_heartbeat" | "retry_after" | "registered_tasks"
                            if !v.is_null() =>
                        {
                            Value::String(format!("<{k}>"))
                        }
                        "worker_stats" => Value::String("<worker_stats>".into()),
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Compares `body` (normalized) with `tests/gateway/golden/<name>.json`; `UPDATE_GOLDEN=1` rewrites the file.
pub(crate) fn assert_golden(name: &str, body: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/gateway/golden")
        .join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(&normalize(body)).expect("json") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "golden {name} differs");
}

/// Checks `value` against a schema of the served OpenAPI document, for the keywords the document uses
/// (`$ref`, `type`, `enum`, `required`, `properties`, `items`, `anyOf`, `maxProperties`, `minimum`,
/// `maximum`), and returns every mismatch with its JSON path. A property the schema does not list is a
/// mismatch too, so the document cannot fall behind the handlers.
pub(crate) fn schema_mismatches(
    doc: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
) -> Vec<String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return schema_mismatches(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        let fits = options
            .iter()
            .any(|o| schema_mismatches(doc, o, value, at).is_empty());
        return if fits {
            Vec::new()
        } else {
            vec![format!("{at}: matches none of anyOf: {value}")]
        };
    }
    let mut out = Vec::new();
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            out.push(format!("{at}: {value} is not of type {t}"));
            return out;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        out.push(format!("{at}: {n} < minimum {min}"));
    }
    if let (Some(max), Some(n)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n > max
    {
        out.push(format!("{at}: {n} > maximum {max}"));
    }
    if let Some(object) = value.as_object() {
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && object.len() as u64 > max
        {
            out.push(format!("{at}: more than {max} properties"));
        }
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(key) {
                out.push(format!("{at}: required property '{key}' is missing"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (key, v) in object {
                match props.get(key) {
                    Some(s) => out.extend(schema_mismatches(doc, s, v, &format!("{at}.{key}"))),
                    None => out.push(format!("{at}: property '{key}' is not in the schema")),
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            out.extend(schema_mismatches(doc, items, v, &format!("{at}[{i}]")));
        }
    }
    out
}
