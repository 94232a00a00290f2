//! The OpenAPI 3.1 document of the REST surface, built from [`ROUTES`] so it lists exactly what is served.

use serde_json::{Map, Value, json};

use redline_catalog::TaskSpec;

use crate::routes::{ROUTES, Route, catalog};

/// What `priority` accepts on every submitting route.
fn priority() -> Value {
    json!({"type": ["integer", "null"], "minimum": 0, "maximum": 9, "default": 5})
}

/// The body of a route, as its handler reads it.
fn request_schema(r: &Route) -> Option<Value> {
    if let Some(spec) = r.task_spec() {
        return Some(task_route_schema(r, spec));
    }
    match r.path {
        "/tasks/submit" => Some(json!({"$ref": "#/components/schemas/Submit"})),
        "/tasks/cleanup" => Some(json!({"type": "object",
            "properties": {"days": {"type": ["integer", "null"], "minimum": 0, "maximum": 36_500, "default": 7}}})),
        _ => None,
    }
}

/// A per-task route's body: the task's declared arguments (and the names the original gave some of them) with
/// their schemas from the catalogue, and `priority`. Other fields are ignored, as the original ignored them.
fn task_route_schema(r: &Route, spec: &TaskSpec) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    let mut exclusive = Vec::new();
    for (name, schema) in spec.arguments() {
        props.insert(name.to_owned(), schema.clone());
        if spec.is_required(name) {
            required.push(name);
        }
        for (old, new) in r.submits.map(|t| t.renamed).unwrap_or_default() {
            if *new == name {
                props.insert((*old).to_owned(), schema.clone());
                exclusive.push(json!({"not": {"required": [name, old]}}));
            }
        }
    }
    props.insert("priority".to_owned(), priority());
    let mut schema = json!({"type": "object", "required": required, "properties": props});
    if !exclusive.is_empty() {
        schema["allOf"] = Value::Array(exclusive);
    }
    schema
}

/// `POST /tasks/submit`: one schema per task type, chosen by `task_name` (its name or an alias), each allowing
/// the task's arguments positionally (a prefix of its declared order, in `args`) and by keyword (the rest, in
/// `kwargs`), exactly as TaskService binds them.
fn submit_schemas(into: &mut Map<String, Value>) {
    let mut refs = Vec::new();
    let mut mapping = Map::new();
    for spec in catalog().specs() {
        let component = format!("Submit.{}", spec.name);
        let reference = format!("#/components/schemas/{component}");
        refs.push(json!({"$ref": reference}));
        let mut names = vec![spec.name.clone()];
        names.extend(spec.aliases.iter().cloned());
        for n in &names {
            mapping.insert(n.clone(), json!(reference));
        }
        let variants: Vec<Value> = (0..=spec.positional.len())
            .map(|k| submit_variant(spec, &names, k))
            .collect();
        into.insert(
            component,
            json!({"description": spec.description, "anyOf": variants}),
        );
    }
    into.insert(
        "Submit".to_owned(),
        json!({
            "type": "object",
            "required": ["task_name"],
            "properties": {
                "task_name": {"type": "string"},
                "args": {"type": ["array", "null"]},
                "kwargs": {"type": ["object", "null"]},
                "queue": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]{0,64}$",
                    "description": "Queue; empty or absent for redline_tasks."},
                "priority": priority(),
            },
            "oneOf": refs,
            "discriminator": {"propertyName": "task_name", "mapping": mapping},
        }),
    );
}

/// The submission of `spec` with its first `k` declared arguments given positionally.
fn submit_variant(spec: &TaskSpec, names: &[String], k: usize) -> Value {
    let positional = &spec.positional[..k];
    let mut kwargs = spec.args_schema.clone();
    if let Some(props) = kwargs.get_mut("properties").and_then(Value::as_object_mut) {
        for p in positional {
            props.remove(p);
        }
    }
    let rest: Vec<Value> = spec.args_schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| !positional.iter().any(|p| *n == p))
        .cloned()
        .collect();
    kwargs["required"] = Value::Array(rest.clone());
    // Absent or null kwargs are `{}`: allowed when nothing is left to require.
    kwargs["type"] = if rest.is_empty() {
        json!(["object", "null"])
    } else {
        json!("object")
    };
    let args = if k == 0 {
        json!({"type": ["array", "null"], "maxItems": 0})
    } else {
        let items: Vec<Value> = positional
            .iter()
            .map(|p| spec.args_schema["properties"][p.as_str()].clone())
            .collect();
        json!({"type": "array", "prefixItems": items, "minItems": k, "maxItems": k})
    };
    let mut required = vec![json!("task_name")];
    if k > 0 {
        required.push(json!("args"));
    }
    if !rest.is_empty() {
        required.push(json!("kwargs"));
    }
    json!({
        "type": "object",
        "required": required,
        "properties": {"task_name": {"enum": names}, "args": args, "kwargs": kwargs},
    })
}

/// The success body of each route, by the schema's name in `components`.
fn response_schema(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("GET", "/tasks/status/{task_id}") => "Task",
        ("GET", "/tasks/result/{task_id}") => "TaskResult",
        ("GET", "/tasks/list") => "TaskList",
        ("GET", "/tasks/queue/stats") => "QueueStats",
        ("GET", "/tasks/health") => "Health",
        ("POST", "/tasks/cancel/{task_id}" | "/tasks/cleanup") => "Message",
        _ => "Submitted",
    }
}

/// The success bodies, as the handlers in [`crate::routes`] write them, and the submission bodies.
fn schemas() -> Value {
    let string = json!({"type": "string"});
    let timestamp = json!({"type": "string", "format": "date-time"});
    let count = json!({"type": "integer", "minimum": 0});
    let status = json!({"type": "string",
        "enum": ["PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]});
    let state = json!({"type": "string",
        "enum": ["queued", "scheduled", "running", "succeeded", "failed", "cancelled"]});
    let queue_stats = json!({"type": "object",
        "required": ["active_tasks", "scheduled_tasks", "reserved_tasks", "registered_tasks", "worker_stats"],
        "properties": {"active_tasks": count, "scheduled_tasks": count, "reserved_tasks": count,
            "registered_tasks": count,
            "worker_stats": {"type": "object", "additionalProperties": {"type": "object"}}}});
    // What TaskService accepts as an id (it makes 16-character ones; a client may choose its own).
    let task_id = json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"});
    json!({
        "Error": {"type": "object", "required": ["error", "code", "message", "details"],
            "properties": {"error": string, "code": {"type": "integer"}, "message": string,
                "details": {"type": "array"}, "retry_after": {"type": "integer"}}},
        "Submitted": {"type": "object", "required": ["task_id", "status", "message"],
            "properties": {"task_id": task_id,
                "status": {"type": "string", "enum": ["submitted"]}, "message": string}},
        "Task": {"type": "object",
            "required": ["task_id", "task_name", "args", "kwargs", "status", "state", "queue", "priority"],
            "properties": {"task_id": task_id, "task_name": string,
                "args": {"type": "array"}, "kwargs": {"type": "object"}, "status": status, "state": state,
                "queue": string, "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                "submitted_at": timestamp, "started_at": timestamp, "completed_at": timestamp,
                "progress": {"type": "object", "required": ["step", "progress"],
                    "properties": {"step": string, "progress": {"type": "number"}}},
                "result": {}, "error": string}},
        "TaskResult": {"type": "object", "required": ["result"],
            "properties": {"result": {}, "status": status, "error": string}},
        "TaskList": {"type": "object", "required": ["tasks", "total", "filter"],
            "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                "total": count, "filter": {"type": ["string", "null"]}}},
        "QueueStats": queue_stats,
        "Health": {"type": "object",
            "required": ["status", "celery_available", "celery_connected", "workers", "queue_stats",
                "registry_size"],
            "properties": {"status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "celery_available": {"type": "boolean"}, "celery_connected": {"type": "boolean"},
                "workers": count, "registry_size": count, "error": string,
                // Empty while the statistics cannot be read.
                "queue_stats": {"anyOf": [queue_stats, {"type": "object", "maxProperties": 0}]}}},
        "Message": {"type": "object", "required": ["message"], "properties": {"message": string}},
    })
}

fn error_response(text: &str) -> Value {
    json!({"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// What `GET /tasks/list?status=` is documented to take: a Celery status or a state name, as TaskService's
/// filter reads them (it ignores case).
const LIST_STATUSES: [&str; 21] = [
    "",
    "PENDING",
    "STARTED",
    "PROGRESS",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "QUEUED",
    "SCHEDULED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "CANCELED",
    "queued",
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let mut paths = Map::new();
    let mut add = |path: &str, method: &str, op: Value| {
        let entry = paths
            .entry(path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = entry {
            o.insert(method.to_ascii_lowercase(), op);
        }
    };
    for r in ROUTES {
        let mut op = json!({
            "summary": r.summary,
            "operationId": r.rpc.map_or_else(|| r.path.trim_start_matches("/tasks/").replace('/', "_"), str::to_owned),
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {"schema":
                    {"$ref": format!("#/components/schemas/{}", response_schema(r.method, r.path))}}}},
                "400": error_response("Invalid request"),
                "401": error_response("API key required or invalid"),
                "404": error_response("Task not found"),
                "415": error_response("Content-Type is not application/json"),
                "429": error_response("Rate limit exceeded"),
                "503": error_response("Task processing not available"),
            },
        });
        if r.path == "/tasks/health" {
            // Unhealthy is the same document with status 503, for probes and load balancers.
            op["responses"]["503"] = json!({"description": "Unhealthy: Redis unreachable or no worker alive",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}});
        }
        if r.path.contains("{task_id}") {
            op["parameters"] = json!([{"name": "task_id", "in": "path", "required": true,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}}]);
        }
        if r.path == "/tasks/list" {
            op["parameters"] = json!([
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": LIST_STATUSES}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000}},
            ]);
        }
        if let Some(schema) = request_schema(r) {
            op["requestBody"] = json!({"required": r.path != "/tasks/cleanup",
                "content": {"application/json": {"schema": schema}}});
        }
        add(r.path, r.method, op);
    }
    for (path, summary) in [
        ("/healthz", "Liveness: the process is up"),
        ("/readyz", "Readiness: TaskService is reachable and ready"),
        ("/openapi.json", "This document"),
    ] {
        add(
            path,
            "GET",
            json!({"summary": summary, "responses": {"200": {"description": "Success"}}}),
        );
    }
    let mut components = schemas();
    if let Value::Object(o) = &mut components {
        submit_schemas(o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "redline REST gateway", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request schemas come from the catalogue: a per-task route requires what its task requires, and
    /// `/tasks/submit` has one schema per task type, reachable by every name it answers to.
    #[test]
    fn request_schemas_are_the_catalogues() {
        let doc = document();
        let convert = &doc["paths"]["/tasks/convert"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            convert["required"],
            json!(["input_file", "output_format", "output_file"])
        );
        assert_eq!(
            convert["properties"]["input_file"]["pattern"],
            json!(redline_catalog::values::relative_path_pattern())
        );
        let analyze = &doc["paths"]["/tasks/analyze"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            analyze["properties"]["parameters"],
            analyze["properties"]["options"]
        );
        let schemas = &doc["components"]["schemas"];
        let mapping = &schemas["Submit"]["discriminator"]["mapping"];
        for spec in catalog().specs() {
            let component = &schemas[format!("Submit.{}", spec.name)];
            assert_eq!(
                component["anyOf"].as_array().map(Vec::len),
                Some(spec.positional.len() + 1),
                "{}",
                spec.name
            );
            for alias in &spec.aliases {
                assert_eq!(mapping[alias], mapping[&spec.name], "{alias}");
            }
        }
    }
}
