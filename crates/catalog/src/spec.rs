//! Task types: the [`TaskType`] declaration, its data form [`TaskSpec`], and the [`Catalog`] of them.
//!
//! A declaration is a Rust type: its argument and result types are ordinary serde structs. Everything else is
//! derived from them: the JSON Schemas (schemars, draft 2020-12) that `ListTaskTypes`, the gateway's OpenAPI
//! document and workers' publications carry; the order positional arguments bind in (serde's own field list);
//! and submit-time validation, which *is* deserialization into the argument type, so what TaskService accepts
//! is exactly what a worker's handler can take.

use std::time::Duration;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Prefix of REDLINE's Celery task names; `redline.background.tasks.X` resolves to `X`.
pub const CELERY_PREFIX: &str = "redline.background.tasks.";

/// Retry budget of a task type that does not set one (Celery's `max_retries`).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Time limit of one attempt of a task type that does not set one (the original's `time_limit=1800`).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1800);

/// A task type's declaration: name, description, defaults, and the types of its arguments and result.
///
/// ```ignore
/// pub struct Sleep;
/// impl TaskType for Sleep {
///     const NAME: &'static str = "redline.sleep";
///     const DESCRIPTION: &'static str = "Sleeps, reporting progress; honours cancellation.";
///     type Args = SleepArgs;
///     type Output = SleepResult;
/// }
/// ```
pub trait TaskType: Send + Sync + 'static {
    /// Canonical name.
    const NAME: &'static str;
    /// What it does, one sentence.
    const DESCRIPTION: &'static str;
    /// Also answers to REDLINE's Celery name, `redline.background.tasks.<NAME>`.
    const CELERY_ALIAS: bool = false;
    /// Retry budget unless the submitter sets one.
    const MAX_RETRIES: u32 = DEFAULT_MAX_RETRIES;
    /// Time limit of one attempt unless the submitter sets one.
    const TIME_LIMIT: Duration = DEFAULT_TIME_LIMIT;
    /// The keyword arguments. A struct (with `deny_unknown_fields` unless it takes anything) or a JSON map.
    type Args: DeserializeOwned + JsonSchema + Send + 'static;
    /// The result.
    type Output: Serialize + JsonSchema + Send + 'static;
}

/// One problem with a submitted field (gRPC `BadRequest.FieldViolation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, such as `kwargs.input_file` or `kwargs.options.columns[1]`.
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

/// Where deserializing arguments failed: the path inside the arguments (`options.columns[1]`, or `.` for the
/// whole object) and serde's message.
type Failure = (String, String);

/// The typed check of a declared type: deserializes keyword arguments into its `Args`.
type Check = fn(&Value) -> Result<(), Failure>;

/// Deserializes `kwargs` into `T::Args`, reporting where it failed.
fn check_args<T: TaskType>(kwargs: &Value) -> Result<(), Failure> {
    serde_path_to_error::deserialize::<_, T::Args>(kwargs)
        .map(drop)
        .map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

/// A task type as data: what TaskService validates submissions against, `ListTaskTypes` lists, and workers
/// publish to Redis so that TaskService learns the types of custom worker builds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Canonical name.
    pub name: String,
    /// Other names it answers to.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What it does.
    pub description: String,
    /// Retry budget unless the submitter sets one.
    pub max_retries: u32,
    /// Time limit of one attempt unless the submitter sets one.
    #[serde(rename = "time_limit_ms", with = "duration_ms")]
    pub time_limit: Duration,
    /// The keyword arguments positional arguments bind to, in order.
    #[serde(default)]
    pub positional: Vec<String>,
    /// JSON Schema (draft 2020-12) of the keyword arguments.
    pub args_schema: Value,
    /// JSON Schema of the result.
    pub result_schema: Value,
    /// The typed check of a type this build declares; `None` for a type only known from a publication.
    #[serde(skip)]
    check: Option<Check>,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The JSON Schema of `T`, every subschema inlined: the schema is embedded in other documents (the OpenAPI
/// document, `ListTaskTypes`), where a `$ref` into its own `$defs` would not resolve.
pub fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(o) = schema.as_object_mut() {
        // Draft and title are the embedding document's business.
        o.remove("$schema");
        o.remove("title");
    }
    schema
}

impl TaskSpec {
    /// The spec of a declared type.
    pub fn of<T: TaskType>() -> Self {
        let mut aliases = Vec::new();
        if T::CELERY_ALIAS {
            aliases.push(format!("{CELERY_PREFIX}{}", T::NAME));
        }
        Self {
            name: T::NAME.to_owned(),
            aliases,
            description: T::DESCRIPTION.to_owned(),
            max_retries: T::MAX_RETRIES,
            time_limit: T::TIME_LIMIT,
            positional: serde_aux::serde_introspection::serde_introspect::<T::Args>()
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            args_schema: schema_of::<T::Args>(),
            result_schema: schema_of::<T::Output>(),
            check: Some(check_args::<T>),
        }
    }

    /// True if `name` is this type's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }

    /// Whether the schema lists `name` as required.
    pub fn is_required(&self, name: &str) -> bool {
        self.args_schema["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|n| n == name))
    }

    /// Whether the arguments are a closed set (unknown keys refused).
    fn closed(&self) -> bool {
        self.args_schema["additionalProperties"] == Value::Bool(false)
    }

    /// The declared keyword arguments: the schema's properties, in positional order where known.
    pub fn arguments(&self) -> Vec<(&str, &Value)> {
        let Some(props) = self.args_schema["properties"].as_object() else {
            return Vec::new();
        };
        let mut out: Vec<(&str, &Value)> = self
            .positional
            .iter()
            .filter_map(|n| props.get_key_value(n).map(|(k, v)| (k.as_str(), v)))
            .collect();
        for (k, v) in props {
            if !out.iter().any(|(n, _)| n == k) {
                out.push((k.as_str(), v));
            }
        }
        out
    }

    /// Merges positional `args` into keyword arguments (in declared order) and checks the result against the
    /// declaration. Every argument's problem is reported, each with the field it concerns: unknown names first,
    /// then declared arguments in order (a missing one, or one whose value its type refuses).
    pub fn bind(
        &self,
        args: &[Value],
        kwargs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let mut bound = kwargs.clone();
        if args.len() > self.positional.len() {
            violations.push(FieldViolation::new(
                "args",
                format!(
                    "{} takes at most {} positional arguments, got {}",
                    self.name,
                    self.positional.len(),
                    args.len()
                ),
            ));
        }
        for (name, value) in self.positional.iter().zip(args) {
            if bound.contains_key(name) {
                violations.push(FieldViolation::new(
                    format!("kwargs.{name}"),
                    "given both positionally and as a keyword",
                ));
            } else {
                bound.insert(name.clone(), value.clone());
            }
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        let whole = Value::Object(bound);
        let failure = match self.check {
            Some(check) => match check(&whole) {
                Ok(()) => return Ok(unwrap_object(whole)),
                Err(failure) => Some(failure),
            },
            None => None,
        };
        let bound = unwrap_object(whole);
        let declared = self.arguments();
        if self.closed() {
            for key in bound.keys() {
                if !declared.iter().any(|(n, _)| n == key) {
                    let known: Vec<&str> = declared.iter().map(|(n, _)| *n).collect();
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
        }
        for (name, schema) in &declared {
            match bound.get(*name) {
                None | Some(Value::Null) if self.is_required(name) => violations.push(
                    FieldViolation::new(format!("kwargs.{name}"), format!("{name} is required")),
                ),
                None => {}
                Some(value) => {
                    if let Some(problem) = self.check_one(name, value, schema) {
                        violations.push(problem);
                    }
                }
            }
        }
        if violations.is_empty()
            && let Some((path, message)) = failure
        {
            // A problem no single argument shows (none here today): report it as serde saw it.
            violations.push(FieldViolation::new(field_path(&path), message));
        }
        if violations.is_empty() {
            Ok(bound)
        } else {
            Err(violations)
        }
    }

    /// The problem of one argument's value, if any: the typed check run on that argument alone (its own
    /// failures have a path inside it; a missing sibling is reported after every present field, at the root),
    /// or for a published type, its JSON type against the schema.
    fn check_one(&self, name: &str, value: &Value, schema: &Value) -> Option<FieldViolation> {
        match self.check {
            Some(check) => {
                let alone = Value::Object(Map::from_iter([(name.to_owned(), value.clone())]));
                match check(&alone) {
                    Err((path, message))
                        if path == name
                            || path.starts_with(&format!("{name}."))
                            || path.starts_with(&format!("{name}[")) =>
                    {
                        Some(FieldViolation::new(field_path(&path), message))
                    }
                    _ => None,
                }
            }
            None => {
                let fits =
                    json_types(schema).is_none_or(|types| types.iter().any(|t| is_type(value, t)));
                (!fits).then(|| {
                    FieldViolation::new(
                        format!("kwargs.{name}"),
                        format!(
                            "must be of type {}",
                            json_types(schema).unwrap_or_default().join(" or ")
                        ),
                    )
                })
            }
        }
    }
}

fn unwrap_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `options.columns[1]` → `kwargs.options.columns[1]`; the root (`.`) → `kwargs`.
fn field_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        "kwargs".to_owned()
    } else {
        format!("kwargs.{path}")
    }
}

/// The JSON types a schema allows (`type` as a string or a list), `None` when it does not say.
pub fn json_types(schema: &Value) -> Option<Vec<&str>> {
    match &schema["type"] {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
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

    /// Adds types not already present (by canonical name): a declared type is never replaced by a
    /// publication of it.
    pub fn extend(&mut self, more: impl IntoIterator<Item = TaskSpec>) {
        for spec in more {
            if !self.specs.iter().any(|s| s.name == spec.name) {
                self.specs.push(spec);
            }
        }
    }
}
