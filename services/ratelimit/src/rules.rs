//! The rule file: envoyproxy/ratelimit's YAML format, extended.
//!
//! One YAML document per domain (several documents per file, `---`-separated, or a directory of `*.yaml` /
//! `*.yml` files). Keys of the original format: `domain`, `descriptors` (nested, `key`, optional `value`,
//! `*` wildcards), `rate_limit` `{unit, requests_per_unit, unlimited, name, replaces}`, `shadow_mode`,
//! `quota_mode` (a soft quota: the request is refused only when every quota-mode limit applied to it is spent;
//! with `shadow_mode` too, shadow wins), `share_threshold` (every value matching a wildcard counts against one
//! shared counter instead of one counter per value); the statistics-only keys (`detailed_metric`,
//! `value_to_metric`, `metadata`) are accepted and ignored. Extensions: `unit_multiplier`, `algorithm` and `failure_mode` on a `rate_limit` or a
//! descriptor, `rate_limits` (a list), and `limits` (Flask-Limiter notation, `"200 per day; 50 per hour"`).
//! Unknown keys are errors, as in envoyproxy/ratelimit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::limits::{
    Algorithm, FailureMode, LimitDef, MAX_LIMIT, MAX_WINDOW_MS, Mode, default_name,
    parse_flask_limits,
};

/// Why a rule file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// YAML syntax or structure.
    #[error("{path}: {source}")]
    Yaml {
        /// The path.
        path: PathBuf,
        /// The cause, with line and column.
        source: serde_yaml_ng::Error,
    },
    /// Valid YAML, invalid rule.
    #[error("{path}: domain {domain:?}: {reason}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// The domain.
        domain: String,
        /// What is wrong.
        reason: String,
    },
}

// === YAML shape ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainYaml {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorYaml {
    key: String,
    value: Option<String>,
    rate_limit: Option<RateLimitYaml>,
    #[serde(default)]
    rate_limits: Vec<RateLimitYaml>,
    limits: Option<String>,
    #[serde(default)]
    descriptors: Vec<DescriptorYaml>,
    #[serde(default)]
    shadow_mode: bool,
    algorithm: Option<Algorithm>,
    failure_mode: Option<FailureMode>,
    #[serde(default)]
    share_threshold: bool,
    #[serde(default)]
    quota_mode: bool,
    // Statistics options of envoyproxy/ratelimit: accepted so its files load, without effect here.
    #[serde(default, rename = "detailed_metric")]
    _detailed_metric: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "value_to_metric")]
    _value_to_metric: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<serde_yaml_ng::Value>,
}

impl DescriptorYaml {
    fn mode(&self) -> Mode {
        Mode::from_flags(self.shadow_mode, self.quota_mode)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitYaml {
    unit: Option<String>,
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<ReplacesYaml>,
    unit_multiplier: Option<u64>,
    algorithm: Option<Algorithm>,
    failure_mode: Option<FailureMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesYaml {
    name: String,
}

// === Compiled rules ===

/// A configured limit with its `replaces` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The limit.
    pub def: LimitDef,
    /// Names of limits this one replaces when both match one request.
    pub replaces: Vec<String>,
}

/// What a descriptor node says.
#[derive(Debug, Clone, Default)]
pub struct Node {
    key: String,
    value: Option<String>,
    /// Limits of this node (several with `rate_limits` or `limits`).
    pub rules: Vec<Arc<Rule>>,
    /// `unlimited: true`: always allowed, never counted.
    pub unlimited: bool,
    /// Values matching this node's wildcard share one counter, keyed by the pattern.
    share_threshold: bool,
    children: Vec<Node>,
}

/// Result of matching one descriptor against the rules.
#[derive(Debug, Clone)]
pub enum Match {
    /// No rule applies.
    None,
    /// The rule says unlimited.
    Unlimited,
    /// These limits apply, counted under `counter_entries` when set (a `share_threshold` wildcard replaced
    /// request values by its pattern), else under the request's own entries.
    Limits(Vec<Arc<Rule>>, Option<Vec<(String, String)>>),
}

/// Every domain's rule tree, immutable once loaded.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    domains: HashMap<String, Vec<Node>>,
    /// Where the rules came from (`None` when built in code).
    pub source: Option<PathBuf>,
    /// When they were loaded.
    pub loaded_at: Option<SystemTime>,
}

/// One flattened rule, for listings.
#[derive(Debug, Clone)]
pub struct ListedRule {
    /// Domain.
    pub domain: String,
    /// Path of `(key, value pattern)`; `*` where the value is omitted.
    pub path: Vec<(String, String)>,
    /// The rule, `None` for `unlimited`.
    pub rule: Option<Arc<Rule>>,
}

impl RuleSet {
    /// Loads a file or a directory of YAML files.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let read_err = |source| RulesError::Read {
            path: path.to_owned(),
            source,
        };
        let mut files = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).map_err(read_err)? {
                let p = entry.map_err(read_err)?.path();
                // Kubernetes ConfigMap mounts contain `..data` symlinked directories: skip hidden entries.
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if !hidden && p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_owned());
        }
        let mut set = Self::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| RulesError::Read {
                path: file.clone(),
                source,
            })?;
            set.add_yaml(&file, &text)?;
        }
        set.source = Some(path.to_owned());
        set.loaded_at = Some(SystemTime::now());
        Ok(set)
    }

    /// Parses YAML text (one or more documents) into a new set.
    pub fn from_yaml(text: &str) -> Result<Self, RulesError> {
        let mut set = Self::default();
        set.add_yaml(Path::new("<inline>"), text)?;
        set.loaded_at = Some(SystemTime::now());
        Ok(set)
    }

    fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), RulesError> {
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value =
                serde_yaml_ng::Value::deserialize(document).map_err(|source| RulesError::Yaml {
                    path: path.to_owned(),
                    source,
                })?;
            if value.is_null() {
                continue;
            }
            let doc: DomainYaml =
                serde_yaml_ng::from_value(value).map_err(|source| RulesError::Yaml {
                    path: path.to_owned(),
                    source,
                })?;
            let invalid = |reason: String| RulesError::Invalid {
                path: path.to_owned(),
                domain: doc.domain.clone(),
                reason,
            };
            if doc.domain.is_empty() {
                return Err(invalid("the domain must not be empty".to_owned()));
            }
            if self.domains.contains_key(&doc.domain) {
                return Err(invalid("duplicate domain".to_owned()));
            }
            let nodes =
                compile_level(&doc.descriptors, &Inherited::default(), &[]).map_err(invalid)?;
            self.domains.insert(doc.domain.clone(), nodes);
        }
        Ok(())
    }

    /// Whether `domain` is configured.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// Finds the rule for one descriptor: at each level an exact `key`+`value` match first, then a wildcard
    /// value, then the bare `key`; the descriptor's depth must equal the rule's depth (envoyproxy/ratelimit).
    pub fn find(&self, domain: &str, entries: &[(String, String)]) -> Match {
        let Some(mut level) = self.domains.get(domain) else {
            return Match::None;
        };
        let mut shared: Option<Vec<(String, String)>> = None;
        for (i, (key, value)) in entries.iter().enumerate() {
            let candidates = level.iter().filter(|n| &n.key == key);
            let exact = candidates
                .clone()
                .find(|n| n.value.as_deref() == Some(value));
            let wildcard = || {
                candidates.clone().find(|n| {
                    n.value
                        .as_deref()
                        .is_some_and(|p| p.contains('*') && glob(p, value))
                })
            };
            let bare = || candidates.clone().find(|n| n.value.is_none());
            let Some(node) = exact.or_else(wildcard).or_else(bare) else {
                return Match::None;
            };
            if node.share_threshold
                && let Some(pattern) = node.value.as_deref().filter(|p| *p != value)
            {
                let counted = shared.get_or_insert_with(|| entries.to_vec());
                counted[i].1 = pattern.to_owned();
            }
            if i + 1 == entries.len() {
                return if node.unlimited {
                    Match::Unlimited
                } else if node.rules.is_empty() {
                    Match::None
                } else {
                    Match::Limits(node.rules.clone(), shared)
                };
            }
            level = &node.children;
        }
        Match::None
    }

    /// Every rule, depth first, for listings.
    pub fn list(&self) -> Vec<ListedRule> {
        let mut out = Vec::new();
        let mut domains: Vec<_> = self.domains.iter().collect();
        domains.sort_by(|a, b| a.0.cmp(b.0));
        for (domain, nodes) in domains {
            let mut path = Vec::new();
            list_level(domain, nodes, &mut path, &mut out);
        }
        out
    }

    /// True when no configured limit needs Redis while it is away (every rule fails open or local). False
    /// without rules: callers then bring their own limits, whose modes are unknown in advance.
    pub fn survives_store_outage(&self) -> bool {
        let listed = self.list();
        !listed.is_empty()
            && listed.iter().all(|r| {
                r.rule.as_ref().is_none_or(|r| {
                    matches!(r.def.failure_mode, FailureMode::Open | FailureMode::Local)
                })
            })
    }
}

fn list_level(
    domain: &str,
    nodes: &[Node],
    path: &mut Vec<(String, String)>,
    out: &mut Vec<ListedRule>,
) {
    for node in nodes {
        path.push((
            node.key.clone(),
            node.value.clone().unwrap_or_else(|| "*".to_owned()),
        ));
        if node.unlimited {
            out.push(ListedRule {
                domain: domain.to_owned(),
                path: path.clone(),
                rule: None,
            });
        }
        for rule in &node.rules {
            out.push(ListedRule {
                domain: domain.to_owned(),
                path: path.clone(),
                rule: Some(rule.clone()),
            });
        }
        list_level(domain, &node.children, path, out);
        path.pop();
    }
}

/// `*` matches any run of characters, anywhere in the pattern.
fn glob(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) {
        return false;
    }
    let mut rest = &value[first.len()..];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Debug, Clone, Copy, Default)]
struct Inherited {
    algorithm: Option<Algorithm>,
    failure_mode: Option<FailureMode>,
}

fn unit_ms(unit: &str) -> Option<u64> {
    // envoyproxy/ratelimit's units: a month is 30 days and a year 365 days.
    Some(match unit.to_ascii_lowercase().as_str() {
        "second" => 1_000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => 86_400_000,
        "week" => 7 * 86_400_000,
        "month" => 30 * 86_400_000,
        "year" => 365 * 86_400_000,
        _ => return None,
    })
}

fn compile_level(
    descriptors: &[DescriptorYaml],
    inherited: &Inherited,
    path: &[String],
) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::with_capacity(descriptors.len());
    let mut seen = std::collections::HashSet::new();
    for d in descriptors {
        let here = format!("{}={}", d.key, d.value.as_deref().unwrap_or("*"));
        let mut at: Vec<String> = path.to_vec();
        at.push(here.clone());
        let where_ = at.join(" / ");
        if d.key.is_empty() {
            return Err(format!("{where_}: descriptor key must not be empty"));
        }
        if !seen.insert((d.key.clone(), d.value.clone())) {
            return Err(format!("{where_}: duplicate descriptor"));
        }
        let scope = Inherited {
            algorithm: d.algorithm.or(inherited.algorithm),
            failure_mode: d.failure_mode.or(inherited.failure_mode),
        };
        if d.share_threshold && !d.value.as_deref().is_some_and(|v| v.contains('*')) {
            return Err(format!(
                "{where_}: share_threshold needs a wildcard value (such as \"foo*\")"
            ));
        }
        let mut node = Node {
            key: d.key.clone(),
            value: d.value.clone(),
            share_threshold: d.share_threshold,
            ..Node::default()
        };
        let yaml_limits = d.rate_limit.iter().chain(d.rate_limits.iter());
        for rl in yaml_limits {
            if rl.unlimited {
                if rl.unit.is_some() || rl.requests_per_unit.is_some() {
                    return Err(format!(
                        "{where_}: unlimited cannot be combined with unit or requests_per_unit"
                    ));
                }
                node.unlimited = true;
                continue;
            }
            let unit = rl
                .unit
                .as_deref()
                .ok_or_else(|| format!("{where_}: rate_limit needs a unit"))?;
            let size = unit_ms(unit).ok_or_else(|| {
                format!(
                    "{where_}: unknown unit {unit:?} (second, minute, hour, day, week, month, year)"
                )
            })?;
            let multiplier = rl.unit_multiplier.unwrap_or(1);
            if multiplier == 0 {
                return Err(format!("{where_}: unit_multiplier must be at least 1"));
            }
            let window_ms = size
                .checked_mul(multiplier)
                .filter(|w| *w <= MAX_WINDOW_MS)
                .ok_or_else(|| format!("{where_}: window longer than 10 years"))?;
            let limit = rl
                .requests_per_unit
                .ok_or_else(|| format!("{where_}: rate_limit needs requests_per_unit"))?;
            if limit > MAX_LIMIT {
                return Err(format!("{where_}: requests_per_unit above {MAX_LIMIT}"));
            }
            let def = LimitDef {
                name: rl
                    .name
                    .clone()
                    .unwrap_or_else(|| default_name(limit, window_ms)),
                limit,
                window_ms,
                algorithm: rl
                    .algorithm
                    .or(scope.algorithm)
                    .unwrap_or(Algorithm::FixedWindow),
                mode: d.mode(),
                failure_mode: rl.failure_mode.or(scope.failure_mode).unwrap_or_default(),
            };
            node.rules.push(Arc::new(Rule {
                def,
                replaces: rl.replaces.iter().map(|r| r.name.clone()).collect(),
            }));
        }
        if let Some(text) = &d.limits {
            let parsed =
                parse_flask_limits(text, scope.algorithm.unwrap_or(Algorithm::FixedWindow))
                    .map_err(|e| format!("{where_}: {e}"))?;
            for mut def in parsed {
                def.mode = d.mode();
                def.failure_mode = scope.failure_mode.unwrap_or_default();
                node.rules.push(Arc::new(Rule {
                    def,
                    replaces: Vec::new(),
                }));
            }
        }
        if node.unlimited && !node.rules.is_empty() {
            return Err(format!(
                "{where_}: unlimited cannot be combined with limits"
            ));
        }
        node.children = compile_level(&d.descriptors, &scope, &at)?;
        nodes.push(node);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn limits(m: Match) -> Vec<(u64, u64)> {
        match m {
            Match::Limits(rules, _) => rules
                .iter()
                .map(|r| (r.def.limit, r.def.window_ms))
                .collect(),
            Match::None | Match::Unlimited => Vec::new(),
        }
    }

    #[test]
    fn share_threshold_counts_wildcard_values_together() {
        let rules = RuleSet::from_yaml(
            r#"
domain: d
descriptors:
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /files/*
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: path
    value: /api/health
    rate_limit: {unit: minute, requests_per_unit: 50}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let counted = |value: &str| match rules.find("d", &e(&[("path", value)])) {
            Match::Limits(_, shared) => shared,
            other => panic!("{other:?}"),
        };
        // Shared: both values count under the pattern.
        assert_eq!(counted("/api/a"), Some(e(&[("path", "/api/*")])));
        assert_eq!(counted("/api/b"), Some(e(&[("path", "/api/*")])));
        // Without share_threshold each value has its own counter; an exact match is never shared.
        assert_eq!(counted("/files/a"), None);
        assert_eq!(counted("/api/health"), None);
        let err = RuleSet::from_yaml(
            "domain: d\ndescriptors:\n  - key: path\n    value: /x\n    share_threshold: true\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
        );
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("share_threshold needs a wildcard")),
            "{err:?}"
        );
    }

    #[test]
    fn most_specific_match_wins_and_depth_must_match() {
        let rules = RuleSet::from_yaml(
            r#"
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    rate_limit: {unit: second, requests_per_unit: 200}
  - key: path
    value: "/api/*"
    rate_limit: {unit: minute, requests_per_unit: 7}
    descriptors:
      - key: user
        limits: "200 per day; 50 per hour"
"#,
        )
        .unwrap();
        assert_eq!(
            limits(rules.find("mongo_cps", &e(&[("database", "users")]))),
            vec![(500, 1000)]
        );
        assert_eq!(
            limits(rules.find("mongo_cps", &e(&[("database", "x")]))),
            vec![(200, 1000)]
        );
        assert_eq!(
            limits(rules.find("mongo_cps", &e(&[("path", "/api/v1")]))),
            vec![(7, 60_000)]
        );
        assert_eq!(
            limits(rules.find("mongo_cps", &e(&[("path", "/api/v1"), ("user", "u")]))),
            vec![(200, 86_400_000), (50, 3_600_000)]
        );
        assert!(matches!(
            rules.find("mongo_cps", &e(&[("path", "/other")])),
            Match::None
        ));
        assert!(matches!(
            rules.find("mongo_cps", &e(&[("database", "users"), ("extra", "1")])),
            Match::None
        ));
        assert!(matches!(
            rules.find("nope", &e(&[("database", "users")])),
            Match::None
        ));
    }

    #[test]
    fn extensions_parse() {
        let rules = RuleSet::from_yaml(
            r#"
domain: d
descriptors:
  - key: k
    algorithm: gcra
    failure_mode: local
    rate_limits:
      - {unit: second, unit_multiplier: 30, requests_per_unit: 5, name: burst}
      - {unit: minute, unit_multiplier: 5, requests_per_unit: 50, algorithm: sliding_window, failure_mode: closed}
"#,
        )
        .unwrap();
        let Match::Limits(found, _) = rules.find("d", &e(&[("k", "v")])) else {
            panic!("no match")
        };
        assert_eq!(found[0].def.window_ms, 30_000);
        assert_eq!(found[0].def.algorithm, Algorithm::Gcra);
        assert_eq!(found[0].def.failure_mode, FailureMode::Local);
        assert_eq!(found[1].def.window_ms, 300_000);
        assert_eq!(found[1].def.algorithm, Algorithm::SlidingWindow);
        assert_eq!(found[1].def.failure_mode, FailureMode::Closed);
    }

    #[test]
    fn shadow_and_quota_modes_apply_to_their_descriptor() {
        let rules = RuleSet::from_yaml(
            r#"
domain: d
descriptors:
  - key: quota
    quota_mode: true
    limits: "5 per minute; 50 per hour"
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: both
    shadow_mode: true
    quota_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: plain
    rate_limit: {unit: second, requests_per_unit: 1}
"#,
        )
        .unwrap();
        let mode = |key: &str| {
            let Match::Limits(found, _) = rules.find("d", &e(&[(key, "v")])) else {
                panic!("no match for {key}")
            };
            found.iter().map(|r| r.def.mode).collect::<Vec<_>>()
        };
        assert_eq!(mode("quota"), vec![Mode::Quota, Mode::Quota]);
        assert_eq!(mode("shadow"), vec![Mode::Shadow]);
        assert_eq!(mode("both"), vec![Mode::Shadow], "shadow wins");
        assert_eq!(mode("plain"), vec![Mode::Enforced]);
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        let cases = [
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
                "unknown unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n",
                "requests_per_unit",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: second, requests_per_unit: 1}\n",
                "unlimited",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    bogus: 1\n",
                "unknown field",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    limits: \"ten per hour\"\n",
                "invalid limit",
            ),
            ("domain: d\n---\ndomain: d\n", "duplicate domain"),
            ("domain: [\n", "line"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, unit_multiplier: 0, requests_per_unit: 1}\n",
                "unit_multiplier",
            ),
        ];
        for (text, expected) in cases {
            let err = RuleSet::from_yaml(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn globs_match_anywhere() {
        assert!(glob("/api/*", "/api/x"));
        assert!(glob("*-admin", "root-admin"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(!glob("ab*ba", "aba"));
    }
}
