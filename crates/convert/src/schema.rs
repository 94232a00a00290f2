//! The canonical schema and the normalisation of any input to it.
//!
//! Every reader maps its columns to the canonical set (`ticker, timestamp, open, high, low,
//! close, vol, openint, format`): Stooq `<TICKER>,<PER>,<DATE>,<TIME>,...` headers, the
//! downloaders' `Open/High/Low/Close/Volume/OpenInt/Date`, and canonical names, case-insensitively.
//! Missing canonical columns become nulls, numerics become `Float64`, and timestamps become
//! `Timestamp(Microsecond)` without a time zone (naive UTC, as the original).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, StringArray, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder, new_null_array,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::DataError;

/// The canonical column names, in order (the catalogue's [`redline_catalog::values::Column`]).
pub use redline_catalog::values::CANONICAL_COLUMNS;

/// The numeric canonical columns.
pub const NUMERIC_COLUMNS: [&str; 6] = ["open", "high", "low", "close", "vol", "openint"];

/// The timestamp type of the canonical schema.
pub const TIMESTAMP_TYPE: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

/// The canonical Arrow schema.
pub fn canonical_schema() -> SchemaRef {
    let fields: Vec<Field> = CANONICAL_COLUMNS
        .iter()
        .map(|name| Field::new(*name, canonical_type(name), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The canonical type of a canonical column.
pub fn canonical_type(name: &str) -> DataType {
    match name {
        "ticker" | "format" => DataType::Utf8,
        "timestamp" => TIMESTAMP_TYPE,
        _ => DataType::Float64,
    }
}

/// What an input column becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A canonical column (index into [`CANONICAL_COLUMNS`]).
    Canonical(usize),
    /// A Stooq `<DATE>` (`%Y%m%d`), combined with [`Role::StooqTime`] into `timestamp`.
    StooqDate,
    /// A Stooq `<TIME>` (`%H%M%S`).
    StooqTime,
}

/// Maps input header names to roles; unknown columns (e.g. `<PER>`, `Adj Close`) are dropped.
/// The first column mapping to a role wins.
pub fn map_columns(names: &[String]) -> Vec<Option<Role>> {
    let norm: Vec<String> = names
        .iter()
        .map(|n| {
            n.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_ascii_lowercase()
        })
        .collect();
    let has_time = norm.iter().any(|n| n == "time");
    let has_timestamp = norm.iter().any(|n| n == "timestamp" || n == "datetime");
    let mut taken: Vec<Role> = Vec::new();
    norm.iter()
        .map(|n| {
            let role = match n.as_str() {
                "ticker" | "symbol" => Some(Role::Canonical(0)),
                "timestamp" | "datetime" => Some(Role::Canonical(1)),
                "date" if has_time && !has_timestamp => Some(Role::StooqDate),
                "date" if !has_timestamp => Some(Role::Canonical(1)),
                "time" if !has_timestamp => Some(Role::StooqTime),
                "open" => Some(Role::Canonical(2)),
                "high" => Some(Role::Canonical(3)),
                "low" => Some(Role::Canonical(4)),
                "close" => Some(Role::Canonical(5)),
                "vol" | "volume" => Some(Role::Canonical(6)),
                "openint" | "open_interest" => Some(Role::Canonical(7)),
                "format" => Some(Role::Canonical(8)),
                _ => None,
            };
            match role {
                Some(r) if taken.contains(&r) => None,
                Some(r) => {
                    taken.push(r);
                    Some(r)
                }
                None => None,
            }
        })
        .collect()
}

/// The type a text reader should parse an input column with, given its role.
pub fn text_read_type(role: Role) -> DataType {
    match role {
        Role::Canonical(i) if (2..=7).contains(&i) => DataType::Float64,
        _ => DataType::Utf8,
    }
}

// === Timestamp parsing ===

const MICROS_PER_SEC: i64 = 1_000_000;

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Howard Hinnant's algorithm: days since 1970-01-01 in the proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn date_micros(y: u32, m: u32, d: u32) -> Option<i64> {
    let y = i64::from(y);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 * MICROS_PER_SEC)
}

fn hms_micros(h: u32, mi: u32, s: u32) -> Option<i64> {
    // 60 is accepted for leap seconds written by some feeds; it rolls into the next minute.
    if h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some((i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * MICROS_PER_SEC)
}

/// Parses a Stooq `%H%M%S` time (leading zeros may be missing: `93000` is 09:30:00).
pub fn parse_stooq_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 6 {
        return None;
    }
    let v = digits(s.as_bytes())?;
    hms_micros(v / 10_000, (v / 100) % 100, v % 100)
}

/// Parses a timestamp to microseconds since the Unix epoch (naive, UTC).
///
/// Accepted: ISO 8601 (`2024-01-02`, `2024-01-02T09:30:00`, fractional seconds, `Z` or `±HH:MM`
/// offsets, which are converted to UTC), `%Y-%m-%d %H:%M:%S`, Stooq `%Y%m%d` (exactly 8
/// digits) and `%Y%m%d%H%M%S` (14 digits), and epoch seconds (any other number, fractions allowed).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
        return parse_iso(b);
    }
    if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
        return date_micros(digits(&b[0..4])?, digits(&b[4..6])?, digits(&b[6..8])?);
    }
    if b.len() == 14 && b.iter().all(u8::is_ascii_digit) {
        let d = date_micros(digits(&b[0..4])?, digits(&b[4..6])?, digits(&b[6..8])?)?;
        let t = hms_micros(digits(&b[8..10])?, digits(&b[10..12])?, digits(&b[12..14])?)?;
        return Some(d + t);
    }
    parse_epoch_seconds(s)
}

fn parse_epoch_seconds(s: &str) -> Option<i64> {
    if let Ok(v) = s.parse::<i64>() {
        return v.checked_mul(MICROS_PER_SEC);
    }
    let f: f64 = s.parse().ok()?;
    let micros = (f * 1e6).round();
    // Excludes NaN, infinities and values outside the i64 range.
    if micros.is_finite() && micros.abs() < 9.2e18 {
        #[allow(clippy::cast_possible_truncation)]
        Some(micros as i64)
    } else {
        None
    }
}

fn parse_iso(b: &[u8]) -> Option<i64> {
    let date = date_micros(digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?)?;
    let rest = &b[10..];
    if rest.is_empty() {
        return Some(date);
    }
    if rest[0] != b'T' && rest[0] != b' ' {
        return None;
    }
    let t = &rest[1..];
    if t.len() < 5 || t[2] != b':' {
        return None;
    }
    let h = digits(&t[0..2])?;
    let mi = digits(&t[3..5])?;
    let mut i = 5;
    let mut sec = 0;
    if t.len() >= 8 && t[5] == b':' {
        sec = digits(&t[6..8])?;
        i = 8;
    }
    let mut micros = hms_micros(h, mi, sec)?;
    if i < t.len() && (t[i] == b'.' || t[i] == b',') {
        i += 1;
        let start = i;
        while i < t.len() && t[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &t[start..i];
        if frac.is_empty() {
            return None;
        }
        // Keep microsecond precision; further digits are truncated.
        let mut v: i64 = 0;
        for k in 0..6 {
            v = v * 10 + frac.get(k).map_or(0, |c| i64::from(c - b'0'));
        }
        micros += v;
    }
    let tz = &t[i..];
    let offset = match tz {
        [] | b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (oh, om) = match rest {
                [a, b2, b':', c, d] => (digits(&[*a, *b2])?, digits(&[*c, *d])?),
                [a, b2, c, d] => (digits(&[*a, *b2])?, digits(&[*c, *d])?),
                [a, b2] => (digits(&[*a, *b2])?, 0),
                _ => return None,
            };
            let off = (i64::from(oh) * 3600 + i64::from(om) * 60) * MICROS_PER_SEC;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(date + micros - offset)
}

// === Normalisation ===

/// Turns batches read from one input into canonical batches.
#[derive(Debug, Clone)]
pub struct Normalizer {
    file: String,
    /// Input column index for each canonical column, if any.
    sources: [Option<usize>; 9],
    stooq_date: Option<usize>,
    stooq_time: Option<usize>,
    default_ticker: Option<String>,
    default_format: Option<String>,
    rows_seen: u64,
    schema: SchemaRef,
}

impl Normalizer {
    /// Builds a normaliser for an input whose columns have the given names.
    ///
    /// `file` names the input in error messages; `default_ticker` fills a missing ticker column
    /// (downloads); `default_format` fills a missing `format` column (`stooq_txt` for Stooq text).
    pub fn new(file: &str, names: &[String], default_ticker: Option<String>) -> Self {
        let roles = map_columns(names);
        let mut sources = [None; 9];
        let mut stooq_date = None;
        let mut stooq_time = None;
        for (i, r) in roles.iter().enumerate() {
            match r {
                Some(Role::Canonical(c)) => sources[*c] = Some(i),
                Some(Role::StooqDate) => stooq_date = Some(i),
                Some(Role::StooqTime) => stooq_time = Some(i),
                None => {}
            }
        }
        let is_stooq = names.iter().any(|n| n.trim().starts_with('<'));
        Self {
            file: file.to_owned(),
            sources,
            stooq_date,
            stooq_time,
            default_ticker,
            default_format: is_stooq.then(|| "stooq_txt".to_owned()),
            rows_seen: 0,
            schema: canonical_schema(),
        }
    }

    /// The canonical columns that the input actually carries (or that are filled by defaults).
    pub fn present_columns(&self) -> Vec<&'static str> {
        CANONICAL_COLUMNS
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.sources[*i].is_some()
                    || (*i == 1 && self.stooq_date.is_some())
                    || (*i == 0 && self.default_ticker.is_some())
                    || (*i == 8 && self.default_format.is_some())
            })
            .map(|(_, n)| *n)
            .collect()
    }

    /// Converts one input batch into a canonical batch; rows in errors continue from the
    /// previous batch.
    pub fn normalize(&mut self, input: &RecordBatch) -> Result<RecordBatch, DataError> {
        let first_row = self.rows_seen + 1;
        let out = self.normalize_at(input, first_row)?;
        self.rows_seen += input.num_rows() as u64;
        Ok(out)
    }

    /// Converts one input batch whose first row is data row `first_row` (1-based) of its chunk.
    pub fn normalize_at(
        &self,
        input: &RecordBatch,
        first_row: u64,
    ) -> Result<RecordBatch, DataError> {
        let n = input.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(9);
        for (i, name) in CANONICAL_COLUMNS.iter().enumerate() {
            let col = match (i, self.sources[i]) {
                (1, Some(src)) => self.timestamp_column(input.column(src), first_row)?,
                (1, None) => match self.stooq_date {
                    Some(d) => self.stooq_timestamp(input, d, first_row)?,
                    None => new_null_array(&TIMESTAMP_TYPE, n),
                },
                (_, Some(src)) => self.cast_column(input.column(src), name, first_row)?,
                (0, None) => constant_or_null(self.default_ticker.as_deref(), n),
                (8, None) => constant_or_null(self.default_format.as_deref(), n),
                (_, None) => new_null_array(&canonical_type(name), n),
            };
            columns.push(col);
        }
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| DataError::Internal(e.to_string()))
    }

    fn cast_column(
        &self,
        col: &ArrayRef,
        name: &str,
        first_row: u64,
    ) -> Result<ArrayRef, DataError> {
        let target = canonical_type(name);
        if col.data_type() == &target {
            return Ok(col.clone());
        }
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        if target == DataType::Float64
            && matches!(
                col.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            // Parse by hand so the error names the offending row; empty strings are missing values.
            let strings = cast_with_options(col, &DataType::Utf8, &strict)
                .map_err(|e| DataError::malformed(&self.file, e.to_string()))?;
            let strings = strings.as_string::<i32>();
            let mut out = Vec::with_capacity(strings.len());
            for (k, v) in strings.iter().enumerate() {
                out.push(match v.map(str::trim) {
                    None | Some("") => None,
                    Some(s) => Some(s.parse::<f64>().map_err(|_| {
                        DataError::malformed_at(
                            &self.file,
                            first_row + k as u64,
                            name,
                            format!("'{s}' is not a number"),
                        )
                    })?),
                });
            }
            return Ok(Arc::new(Float64Array::from(out)));
        }
        cast_with_options(col, &target, &strict).map_err(|e| DataError::Malformed {
            file: self.file.clone(),
            row: None,
            column: Some(name.to_owned()),
            message: format!("cannot convert {} to {target}: {e}", col.data_type()),
        })
    }

    fn timestamp_column(&self, col: &ArrayRef, first_row: u64) -> Result<ArrayRef, DataError> {
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        match col.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, None) => Ok(col.clone()),
            DataType::Timestamp(unit, _) => {
                // Zoned timestamps are stored as UTC instants; drop the zone to keep naive UTC.
                let naive = DataType::Timestamp(*unit, None);
                let plain = col
                    .to_data()
                    .into_builder()
                    .data_type(naive)
                    .build()
                    .map_err(|e| DataError::Internal(e.to_string()))?;
                let plain = arrow::array::make_array(plain);
                cast_with_options(&plain, &TIMESTAMP_TYPE, &strict)
                    .map_err(|e| self.ts_error(None, &e.to_string()))
            }
            DataType::Date32 | DataType::Date64 => cast_with_options(col, &TIMESTAMP_TYPE, &strict)
                .map_err(|e| self.ts_error(None, &e.to_string())),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let strings = cast_with_options(col, &DataType::Utf8, &strict)
                    .map_err(|e| self.ts_error(None, &e.to_string()))?;
                let strings = strings.as_string::<i32>();
                let mut b = TimestampMicrosecondBuilder::with_capacity(strings.len());
                for (k, v) in strings.iter().enumerate() {
                    match v.map(str::trim) {
                        None | Some("") => b.append_null(),
                        Some(s) => match parse_timestamp(s) {
                            Some(t) => b.append_value(t),
                            None => {
                                return Err(self.ts_error(
                                    Some(first_row + k as u64),
                                    &format!("'{s}' is not a recognised timestamp"),
                                ));
                            }
                        },
                    }
                }
                Ok(Arc::new(b.finish()))
            }
            t if t.is_numeric() => {
                // Numbers are epoch seconds.
                let secs = cast_with_options(col, &DataType::Float64, &strict)
                    .map_err(|e| self.ts_error(None, &e.to_string()))?;
                let secs = secs.as_primitive::<arrow::datatypes::Float64Type>();
                let mut b = TimestampMicrosecondBuilder::with_capacity(secs.len());
                for (k, v) in secs.iter().enumerate() {
                    match v {
                        None => b.append_null(),
                        Some(s) => match parse_epoch_seconds(&s.to_string()) {
                            Some(t) => b.append_value(t),
                            None => {
                                return Err(self.ts_error(
                                    Some(first_row + k as u64),
                                    &format!("{s} is not a valid epoch time"),
                                ));
                            }
                        },
                    }
                }
                Ok(Arc::new(b.finish()))
            }
            other => Err(self.ts_error(None, &format!("a {other} column cannot be a timestamp"))),
        }
    }

    fn stooq_timestamp(
        &self,
        input: &RecordBatch,
        date_idx: usize,
        first_row: u64,
    ) -> Result<ArrayRef, DataError> {
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let as_str = |c: &ArrayRef| {
            cast_with_options(c, &DataType::Utf8, &strict)
                .map_err(|e| self.ts_error(None, &e.to_string()))
        };
        let dates = as_str(input.column(date_idx))?;
        let dates = dates.as_string::<i32>();
        let times = match self.stooq_time {
            Some(t) => Some(as_str(input.column(t))?),
            None => None,
        };
        let times: Option<&StringArray> = times.as_ref().map(|t| t.as_string::<i32>());
        let mut b = TimestampMicrosecondBuilder::with_capacity(dates.len());
        for k in 0..dates.len() {
            let row = first_row + k as u64;
            let d = if dates.is_null(k) {
                ""
            } else {
                dates.value(k).trim()
            };
            if d.is_empty() {
                b.append_null();
                continue;
            }
            let Some(day) = parse_timestamp(d) else {
                return Err(DataError::malformed_at(
                    &self.file,
                    row,
                    "<DATE>",
                    format!("'{d}' is not a date (expected YYYYMMDD)"),
                ));
            };
            let t = times
                .filter(|t| !t.is_null(k))
                .map(|t| t.value(k).trim())
                .unwrap_or("");
            let tod = if t.is_empty() {
                0
            } else {
                parse_stooq_time(t).ok_or_else(|| {
                    DataError::malformed_at(
                        &self.file,
                        row,
                        "<TIME>",
                        format!("'{t}' is not a time (expected HHMMSS)"),
                    )
                })?
            };
            b.append_value(day + tod);
        }
        Ok(Arc::new(b.finish()))
    }

    fn ts_error(&self, row: Option<u64>, message: &str) -> DataError {
        DataError::Malformed {
            file: self.file.clone(),
            row,
            column: Some("timestamp".to_owned()),
            message: message.to_owned(),
        }
    }
}

fn constant_or_null(value: Option<&str>, n: usize) -> ArrayRef {
    match value {
        Some(v) => Arc::new(StringArray::from(vec![v; n])),
        None => new_null_array(&DataType::Utf8, n),
    }
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Inverse of `days_from_civil` (Howard Hinnant).
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (y, m as u32, d as u32)
}

/// Appends `t` (microseconds since the epoch) as `%Y-%m-%d %H:%M:%S`, plus `.ffffff` when the
/// microseconds are not zero. This is the text form of every output and is parsed back exactly;
/// it avoids a strftime interpretation per value, which dominated text writes.
pub fn write_timestamp(out: &mut String, t: i64) {
    use std::fmt::Write as _;
    let days = t.div_euclid(86_400 * MICROS_PER_SEC);
    let rem = t.rem_euclid(86_400 * MICROS_PER_SEC);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / MICROS_PER_SEC;
    let micros = rem % MICROS_PER_SEC;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
}

/// Replaces a canonical timestamp column by its text form (see [`write_timestamp`]).
pub fn timestamps_as_text(batch: &RecordBatch) -> Result<RecordBatch, DataError> {
    let Some(idx) = batch.schema().index_of("timestamp").ok() else {
        return Ok(batch.clone());
    };
    let Some(ts) = batch
        .column(idx)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
    else {
        return Ok(batch.clone());
    };
    let mut b = arrow::array::StringBuilder::with_capacity(ts.len(), ts.len() * 20);
    let mut buf = String::with_capacity(32);
    for v in ts.iter() {
        match v {
            Some(t) => {
                buf.clear();
                write_timestamp(&mut buf, t);
                b.append_value(&buf);
            }
            None => b.append_null(),
        }
    }
    let mut columns = batch.columns().to_vec();
    columns[idx] = Arc::new(b.finish());
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[idx] = Field::new("timestamp", DataType::Utf8, true);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DataError::Internal(e.to_string()))
}

/// A typed view of the canonical timestamp column, if the batch has one.
pub fn timestamp_array(batch: &RecordBatch) -> Option<&TimestampMicrosecondArray> {
    batch
        .column_by_name("timestamp")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .map(|d| d.and_utc().timestamp_micros())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn timestamps_in_every_accepted_form() {
        let want = ts("2024-01-02 09:30:05.0");
        assert_eq!(parse_timestamp("2024-01-02 09:30:05"), Some(want));
        assert_eq!(parse_timestamp("2024-01-02T09:30:05"), Some(want));
        assert_eq!(parse_timestamp("2024-01-02T09:30:05Z"), Some(want));
        assert_eq!(parse_timestamp("2024-01-02T11:30:05+02:00"), Some(want));
        assert_eq!(parse_timestamp("20240102093005"), Some(want));
        assert_eq!(parse_timestamp("1704187805"), Some(want));
        assert_eq!(
            parse_timestamp("2024-01-02T09:30:05.25"),
            Some(want + 250_000)
        );
        assert_eq!(
            parse_timestamp("20240102"),
            Some(ts("2024-01-02 00:00:00.0"))
        );
        assert_eq!(
            parse_timestamp("1960-02-29"),
            Some(ts("1960-02-29 00:00:00.0"))
        );
        assert_eq!(
            parse_stooq_time("93000"),
            Some(9 * 3600 * 1_000_000 + 1_800_000_000)
        );
    }

    #[test]
    fn text_timestamps_match_chrono_and_parse_back() {
        for t in [
            0,
            1,
            -1,
            1_704_187_805_250_000,
            -1_800_000_000_123_456,
            253_402_300_799_000_000,
            951_782_400_000_000,
        ] {
            let mut s = String::new();
            write_timestamp(&mut s, t);
            let chrono = chrono::DateTime::from_timestamp_micros(t)
                .map(|d| d.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                .unwrap_or_default();
            assert_eq!(s, chrono.trim_end_matches(".000000"), "{t}");
            assert_eq!(parse_timestamp(&s), Some(t), "{s}");
        }
    }

    #[test]
    fn invalid_timestamps_are_refused() {
        for bad in [
            "2024-02-30",
            "2023-13-01",
            "2024-01-02T25:00:00",
            "yesterday",
            "2024-01-02X",
            "",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_names_map_to_canonical_roles() {
        let names: Vec<String> = [
            "<TICKER>",
            "<PER>",
            "<DATE>",
            "<TIME>",
            "<OPEN>",
            "<HIGH>",
            "<LOW>",
            "<CLOSE>",
            "<VOL>",
            "<OPENINT>",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let roles = map_columns(&names);
        assert_eq!(roles[0], Some(Role::Canonical(0)));
        assert_eq!(roles[1], None);
        assert_eq!(roles[2], Some(Role::StooqDate));
        assert_eq!(roles[3], Some(Role::StooqTime));
        assert_eq!(roles[8], Some(Role::Canonical(6)));
        let names: Vec<String> = ["Date", "Open", "Volume", "Adj Close"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            map_columns(&names),
            vec![
                Some(Role::Canonical(1)),
                Some(Role::Canonical(2)),
                Some(Role::Canonical(6)),
                None
            ]
        );
    }
}
