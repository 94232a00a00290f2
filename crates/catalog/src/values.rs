//! The value types of task arguments, each with its rule, implemented once.
//!
//! TaskService applies a rule when it deserializes a submission, the data library when it resolves a file or
//! opens a format at run time, and the JSON Schema every client sees says the same thing (a `pattern`, an
//! `enum`, a range), so that a request valid by the schema is a request the service accepts.

use std::borrow::Cow;
use std::path::{Component, Path};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// An enumeration that travels as names: each variant has a canonical name and may have aliases. Every name is
/// accepted exactly as written, the canonical one is written back, and the JSON Schema lists them all. Names in
/// `refused` are rejected with their reason instead of the list.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $canonical:literal $(| $alias:literal)* ),+ $(,)?
        }
        $( refused { $($refused:literal => $reason:expr),+ $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every accepted name: canonical names and their aliases.
            pub const NAMES: &'static [&'static str] = &[$($canonical $(, $alias)*),+];

            /// The canonical name.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $canonical),+
                }
            }

            /// The value named exactly `name` (a canonical name or an alias).
            pub fn from_exact(name: &str) -> Option<Self> {
                match name {
                    $($canonical $(| $alias)* => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Why `name` is refused, for an error message.
            pub fn unknown(name: &str) -> String {
                $($(
                    if name.eq_ignore_ascii_case($refused) {
                        return format!("unsupported {} '{name}': {}", $what, $reason);
                    }
                )+)?
                format!("unknown {} '{name}' (expected one of: {})", $what, Self::NAMES.join(", "))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(name: &str) -> Result<Self, String> {
                Self::from_exact(name).ok_or_else(|| Self::unknown(name))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                Self::from_exact(&name).ok_or_else(|| de::Error::custom(Self::unknown(&name)))
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({"type": "string", "enum": Self::NAMES})
            }
        }
    };
}

/// Why DuckDB files are refused: the only maintained Rust binding compiles the whole DuckDB C++ engine.
pub const DUCKDB_REASON: &str = "DuckDB files are not supported by this build: the maintained Rust \
binding bundles and compiles the DuckDB C++ engine, which is too heavy for the worker image; convert to \
parquet, which DuckDB reads natively";

named_enum! {
    /// A data file format the data tasks read and write.
    pub enum Format("format") {
        /// Comma-separated values with a header row.
        Csv = "csv",
        /// Text: reads Stooq `<TICKER>,...` files and tab- or comma-separated text; writes tab-separated.
        Txt = "txt" | "text",
        /// A JSON array of records (`[{"ticker":...}, ...]`), as the original wrote.
        Json = "json",
        /// Newline-delimited JSON, one record per line.
        Ndjson = "ndjson" | "jsonl",
        /// Apache Parquet (`polars` names it too, as the original's UI did).
        Parquet = "parquet" | "polars",
        /// Feather v2, which is the Arrow IPC file format (`.feather`).
        Feather = "feather",
        /// Arrow IPC file format (`.arrow`).
        Arrow = "arrow" | "ipc" | "pyarrow",
    }
    refused { "duckdb" => DUCKDB_REASON }
}

/// A format name or file extension that is not one the data library reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported format '{format}': {reason}")]
pub struct FormatError {
    /// The name or extension as given.
    pub format: String,
    /// Why it is not supported.
    pub reason: String,
}

impl Format {
    /// A format named by an operator or a file extension: case-insensitive, with or without a leading dot
    /// (`CSV`, `.parquet`). Task arguments take the exact names ([`Format::NAMES`]).
    pub fn from_name(name: &str) -> Result<Self, FormatError> {
        let n = name.trim().trim_start_matches('.').to_ascii_lowercase();
        Self::from_exact(&n).ok_or_else(|| FormatError {
            format: name.trim().to_owned(),
            reason: if n == "duckdb" {
                DUCKDB_REASON.to_owned()
            } else {
                "expected one of csv, txt, json, ndjson, parquet, feather, arrow".to_owned()
            },
        })
    }

    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Result<Self, FormatError> {
        match path.extension() {
            Some(ext) => Self::from_name(&ext.to_string_lossy()),
            None => Err(FormatError {
                format: path.display().to_string(),
                reason: "the file has no extension; give the format explicitly".to_owned(),
            }),
        }
    }

    /// The canonical extension, without the dot (the canonical name).
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

named_enum! {
    /// Parquet compression codecs.
    #[derive(Default)]
    pub enum Compression("compression") {
        /// Snappy: fast, the default (as pandas and pyarrow).
        #[default]
        Snappy = "snappy",
        /// Zstandard (level 3): smaller files, slower writes.
        Zstd = "zstd",
        /// No compression.
        None = "none" | "uncompressed",
    }
}

named_enum! {
    /// What to do with missing values.
    #[derive(Default)]
    pub enum HandleMissing("handle_missing") {
        /// Keep them as nulls.
        #[default]
        None = "none" | "",
        /// Drop rows with a missing value in any column the input carries.
        Drop = "drop",
        /// Fill from the previous row (across the whole file, as pandas `ffill`).
        ForwardFill = "forward_fill" | "ffill",
        /// Fill from the next row (as pandas `bfill`); needs look-ahead, bounded by `max_pending_rows`.
        BackwardFill = "backward_fill" | "bfill",
    }
}

named_enum! {
    /// Kinds of analysis.
    pub enum AnalysisType("analysis type") {
        /// `describe()`: count, mean, std, min, quartiles and max per numeric column.
        Basic = "basic",
        /// Same as `basic`.
        Statistical = "statistical",
        /// Close and volume statistics.
        Financial = "financial",
        /// Pearson correlation between numeric columns.
        Correlation = "correlation",
    }
}

named_enum! {
    /// The canonical columns every input is normalised to, in their order.
    pub enum Column("column") {
        /// Instrument symbol.
        Ticker = "ticker",
        /// Bar time, naive UTC.
        Timestamp = "timestamp",
        /// Opening price.
        Open = "open",
        /// Highest price.
        High = "high",
        /// Lowest price.
        Low = "low",
        /// Closing price.
        Close = "close",
        /// Volume.
        Vol = "vol",
        /// Open interest.
        Openint = "openint",
        /// Source format tag (`stooq_txt`).
        Format = "format",
    }
}

impl Column {
    /// The column's position in the canonical schema.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// The canonical column names, in schema order.
pub const CANONICAL_COLUMNS: &[&str] = Column::NAMES;

/// A string newtype checked by `$check` when deserialized, with a JSON Schema carrying the same rule.
macro_rules! checked_string {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident;
        check = $check:path;
        schema = $schema:tt;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis struct $name(String);

        impl $name {
            /// Checks `value` against the rule.
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                $check(&value).map_err(|e| e.to_string())?;
                Ok(Self(value))
            }

            /// The value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(String::deserialize(d)?).map_err(de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// Longest relative path accepted, in characters.
pub const MAX_PATH_CHARS: usize = 1024;

/// A path component that is not `..`: empty is allowed inside a path (`a//b`), not as the first component.
const COMPONENT: &str = r"[^/.\\\x00][^/\\\x00]*|\.[^/.\\\x00][^/\\\x00]*|\.\.[^/\\\x00]+|\.";

/// The rule of [`RelativePath`] as a regular expression (ECMA 262, as JSON Schema uses): a first component that
/// is not empty, then any components, none of them `..`; no backslash or NUL anywhere.
pub fn relative_path_pattern() -> String {
    format!("^(?:{COMPONENT})(?:/(?:{COMPONENT})?)*$")
}

/// Why a user-supplied relative path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path was empty.
    #[error("must not be empty")]
    Empty,
    /// The path was absolute; all paths are relative to the data root.
    #[error("'{0}' is absolute: paths are relative to the data directory")]
    Absolute(String),
    /// The path contained a `..` component.
    #[error("'{0}' leaves the data directory ('..' is not allowed)")]
    Escapes(String),
    /// The path contained a NUL byte or a backslash, which no data file name needs.
    #[error("'{0}' contains a forbidden character (NUL or backslash)")]
    ForbiddenCharacter(String),
    /// The path was longer than [`MAX_PATH_CHARS`].
    #[error("is longer than {MAX_PATH_CHARS} characters")]
    TooLong,
}

/// Checks a user-supplied relative path without touching the filesystem: not empty, at most
/// [`MAX_PATH_CHARS`], not absolute, no `..` component, no backslash or NUL. [`relative_path_pattern`] is the
/// same rule.
pub fn validate_relative_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.chars().count() > MAX_PATH_CHARS {
        return Err(PathError::TooLong);
    }
    // Backslashes would be separators on Windows and never appear in our data file names.
    if path.contains('\0') || path.contains('\\') {
        return Err(PathError::ForbiddenCharacter(path.to_owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_owned()));
    }
    for c in Path::new(path).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Escapes(path.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(path.to_owned()));
            }
        }
    }
    Ok(())
}

checked_string! {
    /// A path relative to the worker's data directory.
    pub struct RelativePath;
    check = validate_relative_path;
    schema = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PATH_CHARS,
        "pattern": relative_path_pattern(),
        "format": "relative-path",
        "description": "A path relative to the worker's data directory: not absolute, no '..', no backslash.",
    };
}

/// Checks a ticker symbol: 1 to 32 of `A-Z a-z 0-9 . _ - ^`, not starting with a dot (it becomes part of a
/// file name).
pub fn validate_ticker(ticker: &str) -> Result<(), String> {
    let ok = !ticker.is_empty()
        && ticker.len() <= 32
        && !ticker.starts_with('.')
        && ticker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '^'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid ticker '{ticker}' (1-32 letters, digits, '.', '_', '-', '^', not starting with '.')"
        ))
    }
}

checked_string! {
    /// A ticker symbol.
    pub struct Ticker;
    check = validate_ticker;
    schema = {
        "type": "string",
        "pattern": r"^[A-Za-z0-9_^\-][A-Za-z0-9._^\-]{0,31}$",
        "description": "Ticker symbol: 1-32 letters, digits, '.', '_', '-', '^', not starting with '.'.",
    };
}

/// Checks a `YYYY-MM-DD` calendar date.
pub fn validate_date(date: &str) -> Result<(), String> {
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let real = shaped && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok();
    if real {
        Ok(())
    } else {
        Err(format!("invalid date '{date}' (expected YYYY-MM-DD)"))
    }
}

checked_string! {
    /// A calendar day, `YYYY-MM-DD`.
    pub struct Day;
    check = validate_date;
    schema = {
        "type": "string",
        "format": "date",
        "pattern": r"^\d{4}-\d{2}-\d{2}$",
    };
}

impl Day {
    /// The date.
    pub fn date(&self) -> chrono::NaiveDate {
        chrono::NaiveDate::parse_from_str(&self.0, "%Y-%m-%d").unwrap_or_default()
    }
}

/// Checks a download source name: 1-64 letters, digits, `_`, `-` or `.`.
pub fn validate_source(source: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&source.len())
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid source '{source}' (1-64 letters, digits, '_', '-', '.')"
        ))
    }
}

checked_string! {
    /// The name of a download source a worker is configured with (`stooq`).
    pub struct SourceName;
    check = validate_source;
    schema = {
        "type": "string",
        "pattern": r"^[A-Za-z0-9_.\-]{1,64}$",
    };
}

/// A whole number in `MIN..=MAX`. A JSON number with no fractional part (`5.0`) is a whole number too, as
/// JSON Schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// Checks `n` against the range.
    pub fn new(n: u64) -> Result<Self, String> {
        if (MIN..=MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("must be a whole number from {MIN} to {MAX}"))
        }
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> Serialize for Bounded<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = f64::deserialize(d)?;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let whole = n.fract() == 0.0 && n >= 0.0 && n <= u64::MAX as f64;
        if !whole {
            return Err(de::Error::custom(format!(
                "must be a whole number from {MIN} to {MAX}"
            )));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Self::new(n as u64).map_err(de::Error::custom)
    }
}

impl<const MIN: u64, const MAX: u64> JsonSchema for Bounded<MIN, MAX> {
    fn schema_name() -> Cow<'static, str> {
        format!("Bounded_{MIN}_{MAX}").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// Seconds in `0..=86400`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Seconds(f64);

impl Seconds {
    /// Most seconds accepted: a day.
    pub const MAX: f64 = 86_400.0;

    /// The seconds.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = f64::deserialize(d)?;
        if (0.0..=Self::MAX).contains(&s) {
            Ok(Self(s))
        } else {
            Err(de::Error::custom("must be from 0 to 86400 seconds"))
        }
    }
}

impl JsonSchema for Seconds {
    fn schema_name() -> Cow<'static, str> {
        "Seconds".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "number", "minimum": 0, "maximum": Self::MAX})
    }
}

/// A non-empty list of distinct output columns, in output order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Columns(Vec<Column>);

impl Columns {
    /// Checks `columns`: at least one, none twice.
    pub fn new(columns: Vec<Column>) -> Result<Self, String> {
        if columns.is_empty() {
            return Err("must list at least one column".to_owned());
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].contains(c) {
                return Err(format!("column '{c}' is listed twice"));
            }
        }
        Ok(Self(columns))
    }

    /// The columns.
    pub fn get(&self) -> &[Column] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(Vec::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl JsonSchema for Columns {
    fn schema_name() -> Cow<'static, str> {
        "Columns".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "array",
            "items": g.subschema_for::<Column>(),
            "minItems": 1,
            "uniqueItems": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_exact_name_and_by_file() {
        assert_eq!(Format::from_exact("jsonl"), Some(Format::Ndjson));
        assert_eq!(Format::from_exact("CSV"), None);
        assert_eq!(Format::from_name("CSV"), Ok(Format::Csv));
        assert_eq!(Format::from_name(".parquet"), Ok(Format::Parquet));
        assert_eq!(
            Format::from_path(Path::new("a/b.feather")),
            Ok(Format::Feather)
        );
        assert!(Format::from_path(Path::new("noext")).is_err());
        assert!(Format::from_name("xlsx").is_err());
        assert!(
            Format::from_path(Path::new("x.duckdb"))
                .is_err_and(|e| e.reason.contains("DuckDB") && e.reason.contains("parquet"))
        );
        for f in Format::ALL {
            assert_eq!(Format::from_exact(f.extension()), Some(*f));
        }
    }

    #[test]
    fn relative_paths_are_validated_without_the_filesystem() {
        for good in [
            "a.csv",
            "downloaded/a.csv",
            "./a.csv",
            "a..b.csv",
            "...",
            "a//b",
            ".hidden",
        ] {
            assert_eq!(validate_relative_path(good), Ok(()), "{good}");
        }
        assert_eq!(validate_relative_path(""), Err(PathError::Empty));
        assert!(matches!(
            validate_relative_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            validate_relative_path("../x.csv"),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(
            validate_relative_path("a/../../x.csv"),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(
            validate_relative_path("a/.."),
            Err(PathError::Escapes(_))
        ));
        assert!(matches!(
            validate_relative_path("a\\..\\x"),
            Err(PathError::ForbiddenCharacter(_))
        ));
        assert_eq!(
            validate_relative_path(&"a".repeat(1025)),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn tickers_and_dates() {
        assert!(validate_ticker("AAPL.US").is_ok());
        assert!(validate_ticker("^SPX").is_ok());
        assert!(validate_ticker("../etc").is_err());
        assert!(validate_ticker("a/b").is_err());
        assert!(validate_date("2024-02-29").is_ok());
        assert!(validate_date("2023-02-29").is_err());
        assert!(validate_date("2024-1-05").is_err());
        assert!(validate_date("2024-13-01").is_err());
    }

    #[test]
    fn names_deserialize_exactly_and_say_what_they_expect() {
        let f: Result<Format, _> = serde_json::from_str("\"duckdb\"");
        assert!(f.is_err_and(|e| e.to_string().contains("DuckDB")));
        let h: Result<HandleMissing, _> = serde_json::from_str("\"ffill\"");
        assert_eq!(h.ok(), Some(HandleMissing::ForwardFill));
        let a: Result<AnalysisType, _> = serde_json::from_str("\"time_series\"");
        assert!(a.is_err_and(|e| e.to_string().contains("basic, statistical")));
    }

    #[test]
    fn bounded_numbers_take_whole_doubles() {
        let n: Result<Bounded<1, 10>, _> = serde_json::from_str("5.0");
        assert_eq!(n.ok().map(Bounded::get), Some(5));
        for bad in ["0", "11", "2.5", "-1"] {
            assert!(
                serde_json::from_str::<Bounded<1, 10>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn columns_are_distinct_and_not_empty() {
        assert!(serde_json::from_str::<Columns>("[\"ticker\", \"close\"]").is_ok());
        assert!(serde_json::from_str::<Columns>("[]").is_err());
        assert!(serde_json::from_str::<Columns>("[\"close\", \"close\"]").is_err());
        assert!(serde_json::from_str::<Columns>("[\"Close\"]").is_err());
    }
}
