//! The OpenAPI 3.1 document of the REST surface, built from [`ROUTES`] so it lists exactly what is served.

use serde_json::{Map, Value, json};

use crate::routes::ROUTES;

fn request_schema(path: &str) -> Option<Value> {
    let string = json!({"type": "string"});
    let options = json!({"type": "object"});
    let priority = json!({"type": "integer", "minimum": 0, "maximum": 9, "default": 5});
    let (required, props): (Vec<&str>, Value) = match path {
        "/tasks/submit" => (
            vec!["task_name"],
            json!({"task_name": string, "args": {"type": "array"}, "kwargs": options,
                   "queue": string, "priority": priority}),
        ),
        "/tasks/convert" => (
            vec!["input_file", "output_format", "output_file"],
            json!({"input_file": string, "output_format": string, "output_file": string,
                   "options": options, "priority": priority}),
        ),
        "/tasks/download" => (
            vec!["ticker", "start_date", "end_date"],
            json!({"ticker": string, "start_date": string, "end_date": string,
                   "source": {"type": "string", "default": "stooq"}, "options": options, "priority": priority}),
        ),
        "/tasks/analyze" => (
            vec!["data_file", "analysis_type"],
            json!({"data_file": string, "analysis_type": string, "options": options, "priority": priority}),
        ),
        "/tasks/upload" => (
            vec!["file_path"],
            json!({"file_path": string, "target_format": string, "options": options, "priority": priority}),
        ),
        "/tasks/bulk" => (
            vec!["operations"],
            json!({"operations": {"type": "array", "minItems": 1, "items": {"type": "object",
                   "properties": {"type": string, "data": options}}}, "options": options, "priority": priority}),
        ),
        "/tasks/cleanup" => (vec![], json!({"days": {"type": "integer", "default": 7}})),
        _ => return None,
    };
    Some(json!({"type": "object", "required": required, "properties": props}))
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

/// The success bodies, as the handlers in [`crate::routes`] write them.
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
    json!({
        "Error": {"type": "object", "required": ["error", "code", "message", "details"],
            "properties": {"error": string, "code": {"type": "integer"}, "message": string,
                "details": {"type": "array"}, "retry_after": {"type": "integer"}}},
        "Submitted": {"type": "object", "required": ["task_id", "status", "message"],
            "properties": {"task_id": {"type": "string", "format": "uuid"},
                "status": {"type": "string", "enum": ["submitted"]}, "message": string}},
        "Task": {"type": "object",
            "required": ["task_id", "task_name", "args", "kwargs", "status", "state", "queue", "priority"],
            "properties": {"task_id": {"type": "string", "format": "uuid"}, "task_name": string,
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
            op["parameters"] = json!([{"name": "task_id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        if r.path == "/tasks/list" {
            op["parameters"] = json!([
                {"name": "status", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000}},
            ]);
        }
        if let Some(schema) = request_schema(r.path) {
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
    json!({
        "openapi": "3.1.0",
        "info": {"title": "redline REST gateway", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas(),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    })
}
