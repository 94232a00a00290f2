//! Conversions between JSON and the protobuf well-known types used by TaskService.

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// JSON → `google.protobuf.Value`.
pub fn to_proto(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(to_proto_list(a)),
        Value::Object(o) => Kind::StructValue(to_proto_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// JSON array → `google.protobuf.ListValue`.
pub fn to_proto_list(a: &[Value]) -> prost_types::ListValue {
    prost_types::ListValue {
        values: a.iter().map(to_proto).collect(),
    }
}

/// JSON object → `google.protobuf.Struct`.
pub fn to_proto_struct(o: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
    }
}

/// `google.protobuf.Value` → JSON. Whole numbers come back as integers: protobuf stores every number as a
/// double, and the original API answered `"progress": 10`, not `10.0`.
pub fn from_proto(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => from_proto_list(l),
        Some(Kind::StructValue(s)) => from_proto_struct(s),
    }
}

/// A double as a JSON number, integral when exactly representable.
pub fn number(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// `google.protobuf.ListValue` → JSON array.
pub fn from_proto_list(l: &prost_types::ListValue) -> Value {
    Value::Array(l.values.iter().map(from_proto).collect())
}

/// `google.protobuf.Struct` → JSON object.
pub fn from_proto_struct(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_proto(v)))
            .collect(),
    )
}

/// A timestamp as ISO 8601 UTC (RFC 3339 with `Z`).
pub fn timestamp(t: &prost_types::Timestamp) -> Value {
    Value::String(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_integers() {
        let v = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(from_proto(&to_proto(&v)), v);
    }

    #[test]
    fn timestamps_are_utc() {
        let t = prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(timestamp(&t), json!("1970-01-01T00:00:00Z"));
    }
}
