//! Conversions between protobuf's JSON-like types (`Struct`, `Value`, `ListValue`), timestamps and
//! durations, and the queue's `serde_json` values and epoch milliseconds.

use std::time::Duration;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

/// A protobuf `Value` as JSON. Numbers are doubles in protobuf; integral ones become JSON integers.
pub fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => list_to_json(l),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

/// A `ListValue` as a JSON array.
pub fn list_to_json(l: &ListValue) -> Json {
    Json::Array(l.values.iter().map(value_to_json).collect())
}

/// A `Struct` as a JSON object.
pub fn struct_to_json(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// JSON as a protobuf `Value`.
pub fn json_to_value(j: &Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(_) => Kind::StructValue(json_to_struct(j)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object as a `Struct` (anything else gives an empty struct).
pub fn json_to_struct(j: &Json) -> Struct {
    Struct {
        fields: j
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A JSON array as a `ListValue` (anything else gives an empty list).
pub fn json_to_list(j: &Json) -> ListValue {
    ListValue {
        values: j
            .as_array()
            .map(|a| a.iter().map(json_to_value).collect())
            .unwrap_or_default(),
    }
}

/// Epoch milliseconds as a `Timestamp`.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Epoch microseconds as a `Timestamp`.
pub fn timestamp_us(us: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1000) as i32,
    }
}

/// A `Timestamp` as epoch milliseconds; `None` before the epoch or out of range.
pub fn timestamp_ms(t: &prost_types::Timestamp) -> Option<u64> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    (t.seconds as u64)
        .checked_mul(1000)?
        .checked_add(t.nanos as u64 / 1_000_000)
}

/// A `std` duration as a protobuf `Duration`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf `Duration` as a `std` one; `None` when negative or malformed.
pub fn std_duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_protobuf_values() {
        let j = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        assert_eq!(struct_to_json(&json_to_struct(&j)), j);
    }

    #[test]
    fn timestamps_and_durations() {
        assert_eq!(
            timestamp_ms(&timestamp(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            timestamp_ms(&prost_types::Timestamp {
                seconds: -1,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            std_duration(&duration(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            std_duration(&prost_types::Duration {
                seconds: -5,
                nanos: 0
            }),
            None
        );
    }
}
