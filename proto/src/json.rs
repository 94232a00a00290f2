//! Protobuf's JSON-like well-known types (`Value`, `Struct`, `ListValue`) and `serde_json` values, and epoch
//! times as `Timestamp`s, converted in one place for every service and client.
//!
//! Protobuf numbers are doubles: a whole double comes back as a JSON integer (`10`, not `10.0`), as the
//! original REST API answered and as integer arguments must read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};
use serde_json::{Map, Number, Value as Json};

/// A double as a JSON number, integral when it is exactly a whole number.
pub fn number(n: f64) -> Json {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)]
        return Json::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// `google.protobuf.Value` → JSON.
pub fn from_value(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => from_list(l),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

/// `google.protobuf.ListValue` → a JSON array.
pub fn from_list(l: &ListValue) -> Json {
    Json::Array(l.values.iter().map(from_value).collect())
}

/// `google.protobuf.Struct` → a JSON object.
pub fn from_struct(s: &Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

/// JSON → `google.protobuf.Value`.
pub fn to_value(j: &Json) -> Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(to_list(a)),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

/// A JSON array → `google.protobuf.ListValue`.
pub fn to_list(a: &[Json]) -> ListValue {
    ListValue {
        values: a.iter().map(to_value).collect(),
    }
}

/// A JSON object → `google.protobuf.Struct`.
pub fn to_struct(o: &Map<String, Json>) -> Struct {
    Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

/// Epoch microseconds as a `Timestamp`.
pub fn timestamp_us(us: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_micros(us))
}

/// Epoch milliseconds as a `Timestamp`.
pub fn timestamp_ms(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A `Timestamp` as epoch milliseconds; `None` before the epoch or when malformed.
pub fn epoch_ms(t: &Timestamp) -> Option<u64> {
    let since = SystemTime::try_from(*t)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    u64::try_from(since.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_and_keeps_integers() {
        let j = json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        let Json::Object(o) = &j else { unreachable!() };
        assert_eq!(from_struct(&to_struct(o)), j);
    }

    #[test]
    fn timestamps_from_and_to_epoch_times() {
        assert_eq!(
            epoch_ms(&timestamp_ms(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            timestamp_us(1_500_000).to_string(),
            "1970-01-01T00:00:01.500Z"
        );
        assert_eq!(
            epoch_ms(&Timestamp {
                seconds: -1,
                nanos: 0
            }),
            None
        );
    }
}
