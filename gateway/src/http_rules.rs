//! The `google.api.http` rules of TaskService, read from the compiled descriptors so the protos stay the source
//! of truth for the REST paths.

use prost_reflect::{DescriptorPool, Value};

/// One RPC's HTTP binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// RPC name, such as `SubmitTask`.
    pub rpc: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Path template.
    pub path: String,
}

/// The rules of `redline.tasks.v1.TaskService`, in declaration order.
pub fn task_service_rules() -> Result<Vec<HttpRule>, String> {
    let pool =
        DescriptorPool::decode(redline_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
    let service = pool
        .get_service_by_name("redline.tasks.v1.TaskService")
        .ok_or("TaskService is not in the descriptor set")?;
    let http = pool
        .get_extension_by_name("google.api.http")
        .ok_or("google.api.http is not in the descriptor set")?;
    let mut rules = Vec::new();
    for method in service.methods() {
        let options = method.options();
        if !options.has_extension(&http) {
            continue;
        }
        let rule = options.get_extension(&http);
        let Some(rule) = rule.as_message() else {
            continue;
        };
        for verb in ["get", "put", "post", "delete", "patch"] {
            if let Some(v) = rule.get_field_by_name(verb)
                && let Value::String(path) = v.as_ref()
                && !path.is_empty()
            {
                rules.push(HttpRule {
                    rpc: method.name().to_owned(),
                    method: verb.to_ascii_uppercase(),
                    path: path.clone(),
                });
            }
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    /// Every annotated RPC is one of the gateway's routes, bound to that RPC, and vice versa.
    #[test]
    fn routes_match_the_protos() {
        let rules = task_service_rules().unwrap_or_else(|e| panic!("{e}"));
        assert!(rules.len() >= 7, "{rules:?}");
        for rule in &rules {
            assert!(
                ROUTES.iter().any(|r| r.method == rule.method
                    && r.path == rule.path
                    && r.rpc == Some(rule.rpc.as_str())),
                "{rule:?} is not served"
            );
        }
        for r in ROUTES.iter().filter(|r| r.rpc.is_some()) {
            assert!(
                rules
                    .iter()
                    .any(|rule| rule.method == r.method && rule.path == r.path),
                "{} {} claims an RPC the protos do not bind there",
                r.method,
                r.path
            );
        }
    }
}
