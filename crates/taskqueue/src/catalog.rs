//! Task type schemas: names, aliases, declared arguments, and submit-time validation.
//!
//! A schema is plain data, so TaskService validates a submission against the same declaration the worker's
//! handler was written for, without linking the handler. Workers also publish their schemas to Redis so that
//! `ListTaskTypes` shows every type some worker can run.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Prefix of REDLINE's Celery task names; `redline.background.tasks.X` resolves to `X`.
pub const CELERY_PREFIX: &str = "redline.background.tasks.";

/// The JSON type an argument must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgKind {
    /// A JSON string.
    String,
    /// A JSON number without a fractional part.
    Integer,
    /// Any JSON number.
    Number,
    /// true or false.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Anything.
    Any,
    /// A relative path inside the data root: no absolute paths, no `..`.
    Path,
}

impl ArgKind {
    /// The name used in schemas.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
            Self::Any => "any",
            Self::Path => "path",
        }
    }
}

/// One declared argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgSpec {
    /// Keyword name.
    pub name: String,
    /// Expected type.
    pub kind: ArgKind,
    /// Must be present (and not null).
    pub required: bool,
    /// What it means.
    pub description: String,
    /// Allowed values for an enumeration (strings); empty when free.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

impl ArgSpec {
    /// A required argument.
    pub fn required(name: &str, kind: ArgKind, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            required: true,
            description: description.to_owned(),
            allowed: Vec::new(),
        }
    }

    /// An optional argument.
    pub fn optional(name: &str, kind: ArgKind, description: &str) -> Self {
        Self {
            required: false,
            ..Self::required(name, kind, description)
        }
    }

    /// Restricts a string argument to `values`.
    pub fn one_of(mut self, values: &[&str]) -> Self {
        self.allowed = values.iter().map(|v| (*v).to_owned()).collect();
        self
    }
}

/// A task type's declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Canonical name.
    pub name: String,
    /// Other names it answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What it does.
    pub description: String,
    /// Declared keyword arguments, in positional order.
    pub args: Vec<ArgSpec>,
    /// Retry budget unless the submitter overrides it.
    pub max_retries: u32,
    /// Time limit of one attempt unless the submitter overrides it.
    #[serde(with = "duration_ms")]
    pub time_limit: Duration,
    /// Accept keyword arguments that are not declared.
    #[serde(default)]
    pub open_kwargs: bool,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Default retry budget (Celery's `max_retries`). Task records don't store it, nor [`DEFAULT_TIME_LIMIT`],
/// when a task uses it: most tasks do, and a queued task stays smaller. The scripts get the value through
/// their prelude (`scripts.rs`).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default time limit (the original's `time_limit=1800`).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1800);

impl TaskSpec {
    /// A spec with default retry budget and time limit.
    pub fn new(name: &str, description: &str, args: Vec<ArgSpec>) -> Self {
        Self {
            name: name.to_owned(),
            aliases: Vec::new(),
            description: description.to_owned(),
            args,
            max_retries: DEFAULT_MAX_RETRIES,
            time_limit: DEFAULT_TIME_LIMIT,
            open_kwargs: false,
        }
    }

    /// Adds the Celery-style long name `redline.background.tasks.<name>` as an alias.
    pub fn with_celery_alias(mut self) -> Self {
        self.aliases.push(format!("{CELERY_PREFIX}{}", self.name));
        self
    }

    /// True if `name` is this type's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }

    /// Merges positional `args` into keyword arguments (in declared order) and checks the result against the
    /// declaration. Every problem is reported, each with the field it concerns.
    pub fn bind(
        &self,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let mut bound = kwargs.clone();
        if args.len() > self.args.len() {
            violations.push(FieldViolation::new(
                "args",
                format!(
                    "{} takes at most {} positional arguments, got {}",
                    self.name,
                    self.args.len(),
                    args.len()
                ),
            ));
        }
        for (spec, value) in self.args.iter().zip(args) {
            if bound.contains_key(&spec.name) {
                violations.push(FieldViolation::new(
                    format!("kwargs.{}", spec.name),
                    "given both positionally and as a keyword".to_owned(),
                ));
            } else {
                bound.insert(spec.name.clone(), value.clone());
            }
        }
        for key in bound.keys() {
            if !self.open_kwargs && !self.args.iter().any(|a| &a.name == key) {
                let known: Vec<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
                violations.push(FieldViolation::new(
                    format!("kwargs.{key}"),
                    format!(
                        "unknown argument of {}; expected one of: {}",
                        self.name,
                        known.join(", ")
                    ),
                ));
            }
        }
        for spec in &self.args {
            match bound.get(&spec.name) {
                None | Some(Value::Null) if spec.required => violations.push(FieldViolation::new(
                    format!("kwargs.{}", spec.name),
                    format!("{} is required", spec.name),
                )),
                None | Some(Value::Null) => {}
                Some(v) => {
                    if let Err(problem) = check_value(spec, v) {
                        violations.push(FieldViolation::new(
                            format!("kwargs.{}", spec.name),
                            problem,
                        ));
                    }
                }
            }
        }
        if violations.is_empty() {
            Ok(bound)
        } else {
            Err(violations)
        }
    }
}

fn check_value(spec: &ArgSpec, v: &Value) -> Result<(), String> {
    let ok = match spec.kind {
        ArgKind::String | ArgKind::Path => v.is_string(),
        ArgKind::Integer => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        ArgKind::Number => v.is_number(),
        ArgKind::Boolean => v.is_boolean(),
        ArgKind::Object => v.is_object(),
        ArgKind::Array => v.is_array(),
        ArgKind::Any => true,
    };
    if !ok {
        return Err(format!("must be of type {}", spec.kind.as_str()));
    }
    if spec.kind == ArgKind::Path {
        check_relative_path(v.as_str().unwrap_or_default())?;
    }
    if !spec.allowed.is_empty() {
        let s = v.as_str().unwrap_or_default();
        if !spec.allowed.iter().any(|a| a == s) {
            return Err(format!("must be one of: {}", spec.allowed.join(", ")));
        }
    }
    Ok(())
}

/// Checks that `path` is relative and stays inside its root: not empty, not absolute, no `..` component.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if path.contains('\0') {
        return Err("must not contain NUL".to_owned());
    }
    let p = std::path::Path::new(path);
    if p.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err(
            "must be a path relative to the data directory, not an absolute path".to_owned(),
        );
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        || path.split(['/', '\\']).any(|s| s == "..")
    {
        return Err("must not contain '..'".to_owned());
    }
    Ok(())
}

/// One problem with a submitted field (gRPC `BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, such as `kwargs.input_file`.
    pub field: String,
    /// What is wrong.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A set of task types, looked up by name or alias.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    specs: Vec<TaskSpec>,
}

impl Catalog {
    /// A catalog of `specs`.
    pub fn new(specs: Vec<TaskSpec>) -> Self {
        Self { specs }
    }

    /// The type `name` (or an alias) refers to.
    pub fn resolve(&self, name: &str) -> Option<&TaskSpec> {
        self.specs.iter().find(|s| s.answers_to(name))
    }

    /// Every type.
    pub fn specs(&self) -> &[TaskSpec] {
        &self.specs
    }

    /// Canonical names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Adds types not already present (by canonical name).
    pub fn extend(&mut self, more: impl IntoIterator<Item = TaskSpec>) {
        for spec in more {
            if !self.specs.iter().any(|s| s.name == spec.name) {
                self.specs.push(spec);
            }
        }
    }
}

/// Every task type the suite ships: the diagnostics and REDLINE's data tasks.
pub fn builtin() -> Vec<TaskSpec> {
    let mut all = diagnostics();
    all.extend(data_tasks());
    all
}

/// File formats the data tasks read and write.
pub const DATA_FORMATS: [&str; 11] = [
    "csv", "txt", "text", "json", "ndjson", "jsonl", "parquet", "feather", "arrow", "ipc",
    "pyarrow",
];

/// REDLINE's data tasks, with the original's names and keyword arguments. Paths are relative to the
/// worker's data directory; absolute paths and `..` are refused here, at submit time.
pub fn data_tasks() -> Vec<TaskSpec> {
    use ArgKind::*;
    let options = || ArgSpec::optional("options", Object, "Task options (see the data task docs).");
    vec![
        TaskSpec::new(
            "process_data_conversion",
            "Converts a market-data file between csv, txt, json, parquet and Arrow IPC, streaming.",
            vec![
                ArgSpec::required("input_file", Path, "Input file, relative to the data directory."),
                ArgSpec::required("output_format", String, "Output format.").one_of(&DATA_FORMATS),
                ArgSpec::required("output_file", Path, "Output file, relative to the data directory."),
                options(),
            ],
        ),
        TaskSpec::new(
            "process_data_download",
            "Downloads daily OHLCV data for a ticker into downloaded/ as canonical CSV.",
            vec![
                ArgSpec::required("ticker", String, "Ticker symbol."),
                ArgSpec::required("start_date", String, "First day, YYYY-MM-DD."),
                ArgSpec::required("end_date", String, "Last day, YYYY-MM-DD."),
                ArgSpec::optional("source", String, "Data source name (default stooq)."),
                options(),
            ],
        ),
        TaskSpec::new(
            "process_data_analysis",
            "Statistics of a data file in one streaming pass.",
            vec![
                ArgSpec::required("data_file", Path, "Data file, relative to the data directory."),
                ArgSpec::required("analysis_type", String, "Kind of analysis.")
                    .one_of(&["basic", "statistical", "financial", "correlation"]),
                options(),
            ],
        ),
        TaskSpec::new(
            "process_file_upload",
            "Reads an uploaded file and optionally converts it to another format.",
            vec![
                ArgSpec::required("file_path", Path, "Uploaded file, relative to the data directory."),
                ArgSpec::optional("target_format", String, "Format to convert to.").one_of(&DATA_FORMATS),
                options(),
            ],
        ),
        TaskSpec::new(
            "process_bulk_operations",
            "Runs convert, download and analyze operations in order; one failure does not stop the others.",
            vec![
                ArgSpec::required("operations", Array, "Operations: [{type, data}]."),
                options(),
            ],
        ),
    ]
    .into_iter()
    .map(TaskSpec::with_celery_alias)
    .collect()
}

/// The diagnostic task types every worker runs, used by tests and benchmarks.
pub fn diagnostics() -> Vec<TaskSpec> {
    use ArgKind::*;
    vec![
        TaskSpec::new("redline.noop", "Does nothing and succeeds at once.", vec![]),
        TaskSpec {
            open_kwargs: true,
            ..TaskSpec::new(
                "redline.echo",
                "Returns its arguments as its result.",
                vec![],
            )
        },
        TaskSpec::new(
            "redline.sleep",
            "Sleeps, reporting progress every second; honours cancellation.",
            vec![ArgSpec::required("seconds", Number, "How long to sleep.")],
        ),
        TaskSpec::new(
            "redline.fail",
            "Fails with a message; retryable unless told otherwise.",
            vec![
                ArgSpec::optional("message", String, "The error message."),
                ArgSpec::optional(
                    "retryable",
                    Boolean,
                    "Whether the error may be retried (default true).",
                ),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> TaskSpec {
        TaskSpec::new(
            "process_data_analysis",
            "",
            vec![
                ArgSpec::required("data_file", ArgKind::Path, ""),
                ArgSpec::required("analysis_type", ArgKind::String, "")
                    .one_of(&["basic", "financial"]),
                ArgSpec::optional("options", ArgKind::Object, ""),
            ],
        )
        .with_celery_alias()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn resolves_short_and_celery_names() {
        let c = Catalog::new(vec![spec()]);
        assert!(c.resolve("process_data_analysis").is_some());
        assert!(
            c.resolve("redline.background.tasks.process_data_analysis")
                .is_some()
        );
        assert!(c.resolve("process_data").is_none());
    }

    #[test]
    fn binds_positional_arguments_in_declared_order() {
        let bound = spec()
            .bind(&[json!("a.csv"), json!("basic")], &Map::new())
            .map_err(|v| format!("{v:?}"));
        assert_eq!(
            bound,
            Ok(obj(json!({"data_file": "a.csv", "analysis_type": "basic"})))
        );
    }

    #[test]
    fn reports_every_violation_with_its_field() {
        let errs = spec()
            .bind(
                &[],
                &obj(json!({"analysis_type": "weird", "options": 3, "parameters": {}})),
            )
            .err()
            .unwrap_or_default();
        let fields: Vec<&str> = errs.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "kwargs.parameters",
                "kwargs.data_file",
                "kwargs.analysis_type",
                "kwargs.options"
            ]
        );
    }

    #[test]
    fn rejects_path_escapes() {
        for bad in ["/etc/passwd", "../x.csv", "a/../../b", "", "a/..\\..\\b"] {
            assert!(check_relative_path(bad).is_err(), "{bad} accepted");
        }
        for good in ["a.csv", "downloaded/x.csv", "a..b.csv"] {
            assert_eq!(check_relative_path(good), Ok(()), "{good} rejected");
        }
    }
}
