//! The deployment files agree with the binaries.
//!
//! docker-compose.yml and every manifest under k8s/ (base, overlays and patches) are read, and for each
//! container that runs a redline binary:
//! - every flag in its command and args is a flag of that binary, and every environment variable it sets is
//!   one the binary reads (through clap, or [`redline_runtime::config::PROCESS_ENV`] and the few names a config reads
//!   by hand), or only exists to be interpolated into another one (`$(REDIS_PASSWORD)`);
//! - every container port, probe port and Service target port is a port the binary listens on, given its
//!   `--listen` / `--metrics-listen` flags, their environment variables or its defaults; gRPC probes go to
//!   the gRPC port, HTTP probes to an HTTP port;
//! - the TaskService, RateLimitService and Redis URLs it is given name a Service (or compose service) and a
//!   port that exist.
//!
//! Kustomize patches are partial containers; they are checked merged onto the base container they patch
//! (args replaced, env and ports merged by name, probes replaced), as kustomize's strategic merge does.
//! JSON 6902 patches must not touch containers, so that every container change stays checkable here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml_ng::Value;

// === binaries ===

/// The redline binaries that run as long-lived containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Binary {
    Tasks,
    Worker,
    Ratelimit,
    Gateway,
}

impl Binary {
    const ALL: [Self; 4] = [Self::Tasks, Self::Worker, Self::Ratelimit, Self::Gateway];

    fn name(self) -> &'static str {
        match self {
            Self::Tasks => "redline-tasks",
            Self::Worker => "redline-worker",
            Self::Ratelimit => "redline-ratelimit",
            Self::Gateway => "redline-gateway",
        }
    }

    /// The binary a container's program (`/usr/local/bin/redline-tasks`, `redline-tasks`) runs.
    fn from_program(program: &str) -> Option<Self> {
        let base = program.rsplit('/').next().unwrap_or(program);
        Self::ALL.into_iter().find(|b| b.name() == base)
    }

    fn command(self) -> clap::Command {
        match self {
            Self::Tasks => redline_tasks::config::Args::command(),
            Self::Worker => redline_worker::config::Args::command(),
            Self::Ratelimit => redline_ratelimit::Args::command(),
            Self::Gateway => redline_gateway::config::Cli::command(),
        }
    }

    /// Variables a config reads by hand, beside clap and [`redline_runtime::config::PROCESS_ENV`].
    fn extra_env(self) -> &'static [&'static str] {
        match self {
            // `--concurrency` falls back to Celery's name (services/worker/src/config.rs).
            Self::Worker => &["CELERY_CONCURRENCY"],
            // Keys inline, beside --api-keys-file (gateway/src/config.rs).
            Self::Gateway => &["REDLINE_GATEWAY_API_KEYS"],
            Self::Tasks | Self::Ratelimit => &[],
        }
    }

    /// The main listen port when neither the flag nor its variable is set, from the binary's own defaults.
    fn default_listen(self) -> Option<u16> {
        let none: HashMap<String, String> = HashMap::new();
        match self {
            Self::Tasks => {
                redline_tasks::Config::from_args(redline_tasks::config::Args::default(), &none)
                    .ok()
                    .map(|c| c.listen.port())
            }
            Self::Gateway => {
                redline_gateway::Config::from_args(redline_gateway::Args::default(), &none)
                    .ok()
                    .map(|c| c.listen.port())
            }
            // Ratelimit's default is a clap default (read from the Command); the worker serves no API.
            Self::Ratelimit | Self::Worker => None,
        }
    }

    /// Whether the main port speaks gRPC (probed with `grpc:`) rather than HTTP.
    fn grpc(self) -> bool {
        matches!(self, Self::Tasks | Self::Ratelimit)
    }
}

/// What a binary accepts, read from its clap configuration.
struct Spec {
    longs: BTreeSet<String>,
    shorts: BTreeSet<char>,
    envs: BTreeSet<String>,
    /// `--listen`: its variable and default port.
    listen: Option<(Option<String>, Option<u16>)>,
    /// `--metrics-listen`: its variable and default port.
    metrics: Option<(Option<String>, Option<u16>)>,
}

impl Spec {
    fn of(binary: Binary) -> Self {
        let command = binary.command();
        let mut spec = Self {
            longs: BTreeSet::new(),
            shorts: BTreeSet::new(),
            envs: BTreeSet::new(),
            listen: None,
            metrics: None,
        };
        for arg in command.get_arguments() {
            let env = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned);
            if let Some(long) = arg.get_long() {
                spec.longs.insert(format!("--{long}"));
            }
            spec.shorts.extend(arg.get_short());
            spec.envs.extend(env.clone());
            let default = arg
                .get_default_values()
                .first()
                .and_then(|v| v.to_str())
                .and_then(port_of);
            match arg.get_long() {
                Some("listen") => spec.listen = Some((env, default.or(binary.default_listen()))),
                Some("metrics-listen") => spec.metrics = Some((env, default)),
                _ => {}
            }
        }
        spec
    }

    fn knows_env(&self, binary: Binary, name: &str) -> bool {
        self.envs.contains(name)
            || redline_runtime::config::PROCESS_ENV.contains(&name)
            || binary.extra_env().contains(&name)
    }
}

/// The port of `host:port` (or `[v6]:port`).
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

/// `(host, port)` of a URL such as `http://redline-tasks:50051` or `redis://:$(PW)@redis:6379/0`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

// === containers ===

/// A port reference: a number or a container port's name.
#[derive(Debug, Clone, PartialEq)]
enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn from_yaml(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .map(Self::Number),
            Value::String(s) => Some(
                s.parse()
                    .map_or_else(|_| Self::Name(s.clone()), Self::Number),
            ),
            _ => None,
        }
    }
}

/// A probe: its kind (`grpc`, `httpGet`, `tcpSocket`, `exec`) and port.
#[derive(Debug, Clone)]
struct Probe {
    field: String,
    kind: String,
    port: Option<PortRef>,
}

/// One container that runs a redline binary, normalised from Kubernetes or compose.
#[derive(Debug, Clone)]
struct Container {
    origin: String,
    binary: Binary,
    args: Vec<String>,
    /// Name and literal value (None for `valueFrom`).
    env: Vec<(String, Option<String>)>,
    /// Declared ports: name and number.
    ports: Vec<(Option<String>, u16)>,
    probes: Vec<Probe>,
    /// Kubernetes (env interpolation with `$(NAME)`, ports must be declared) or compose.
    kubernetes: bool,
}

impl Container {
    fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn flag_value(&self, flag: &str) -> Option<&str> {
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == flag {
                return it.next().map(String::as_str);
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
        None
    }

    /// A listen port: from the flag, else its variable, else the default.
    fn port(&self, flag: &str, setting: Option<&(Option<String>, Option<u16>)>) -> Option<u16> {
        let (env, default) = setting?;
        match self
            .flag_value(flag)
            .or_else(|| env.as_deref().and_then(|e| self.env_value(e)))
        {
            Some(addr) => port_of(addr),
            None => *default,
        }
    }

    /// The main and the admin (metrics) listen ports.
    fn listening(&self, spec: &Spec) -> (Option<u16>, Option<u16>) {
        (
            self.port("--listen", spec.listen.as_ref()),
            self.port("--metrics-listen", spec.metrics.as_ref()),
        )
    }

    fn resolve(&self, port: &PortRef) -> Option<u16> {
        match port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, p)| *p),
        }
    }

    /// The URL a flag or its variable holds.
    fn url(&self, flag: &str, env: &str) -> Option<&str> {
        self.flag_value(flag).or_else(|| self.env_value(env))
    }
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().filter_map(str_of).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Whether an image is the redline image (any registry, tag or digest).
fn is_redline_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next() == Some("redline")
}

/// Identifies a Kubernetes container: (kind, workload name, container name).
type Key = (String, String, String);

/// Labels or a selector.
type Labels = BTreeMap<String, String>;

/// A Kubernetes container as written in one file: complete (with an image) or a patch.
#[derive(Debug, Clone)]
struct K8sContainer {
    key: Key,
    origin: String,
    image: Option<String>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Vec<(String, Option<String>)>,
    env_from: bool,
    ports: Vec<(Option<String>, u16)>,
    probes: Vec<Probe>,
}

impl K8sContainer {
    fn from_yaml(kind: &str, workload: &str, origin: &str, c: &Value) -> Self {
        let name = c.get("name").and_then(str_of).unwrap_or_default();
        let env = c
            .get("env")
            .and_then(Value::as_sequence)
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        (
                            e.get("name").and_then(str_of).unwrap_or_default(),
                            e.get("value").and_then(str_of),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ports = c
            .get("ports")
            .and_then(Value::as_sequence)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|p| {
                        let number = p.get("containerPort").and_then(PortRef::from_yaml)?;
                        match number {
                            PortRef::Number(n) => Some((p.get("name").and_then(str_of), n)),
                            PortRef::Name(_) => None,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut probes = Vec::new();
        for field in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let Some(probe) = c.get(field) else { continue };
            for kind in ["grpc", "httpGet", "tcpSocket", "exec"] {
                if let Some(handler) = probe.get(kind) {
                    probes.push(Probe {
                        field: field.to_owned(),
                        kind: kind.to_owned(),
                        port: handler.get("port").and_then(PortRef::from_yaml),
                    });
                }
            }
        }
        Self {
            key: (kind.to_owned(), workload.to_owned(), name.clone()),
            origin: format!("{origin}: {kind}/{workload} container {name}"),
            image: c.get("image").and_then(str_of),
            command: c.get("command").map(|v| strings(Some(v))),
            args: c.get("args").map(|v| strings(Some(v))),
            env,
            env_from: c.get("envFrom").is_some(),
            ports,
            probes,
        }
    }

    /// This patch applied to `base`, as a strategic merge would.
    fn merged_onto(&self, base: &Self) -> Self {
        let mut out = base.clone();
        out.origin = format!("{} (patching {})", self.origin, base.origin);
        if self.image.is_some() {
            out.image.clone_from(&self.image);
        }
        if self.command.is_some() {
            out.command.clone_from(&self.command);
        }
        if self.args.is_some() {
            out.args.clone_from(&self.args);
        }
        for (name, value) in &self.env {
            match out.env.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1.clone_from(value),
                None => out.env.push((name.clone(), value.clone())),
            }
        }
        for port in &self.ports {
            out.ports.retain(|p| p.1 != port.1);
            out.ports.push(port.clone());
        }
        for probe in &self.probes {
            out.probes.retain(|p| p.field != probe.field);
            out.probes.push(probe.clone());
        }
        out.env_from |= self.env_from;
        out
    }

    /// The redline container this is, if it runs a redline binary.
    fn redline(&self, problems: &mut Vec<String>) -> Option<Container> {
        let image = self.image.as_deref()?;
        if !is_redline_image(image) {
            return None;
        }
        let command = self.command.clone().unwrap_or_default();
        let Some(binary) = command.first().and_then(|p| Binary::from_program(p)) else {
            problems.push(format!(
                "{}: a redline container needs a command naming its binary \
                 (/usr/local/bin/redline-tasks, ...), has {command:?}",
                self.origin
            ));
            return None;
        };
        if self.env_from {
            problems.push(format!(
                "{}: envFrom hides which variables are set; list them under env",
                self.origin
            ));
        }
        let mut args = command[1..].to_vec();
        args.extend(self.args.clone().unwrap_or_default());
        Some(Container {
            origin: self.origin.clone(),
            binary,
            args,
            env: self.env.clone(),
            ports: self.ports.clone(),
            probes: self.probes.clone(),
            kubernetes: true,
        })
    }
}

// === checks ===

/// Flags, variables and ports of one container.
fn check_container(c: &Container, specs: &BTreeMap<Binary, Spec>, problems: &mut Vec<String>) {
    let spec = &specs[&c.binary];
    let mut bad = |msg: String| problems.push(format!("{}: {msg}", c.origin));

    for arg in &c.args {
        if arg == "--" {
            break;
        }
        if let Some(flag) = arg.strip_prefix("--") {
            let name = format!("--{}", flag.split('=').next().unwrap_or(flag));
            if !spec.longs.contains(&name) {
                bad(format!("{} has no flag {name}", c.binary.name()));
            }
        } else if let Some(shorts) = arg.strip_prefix('-')
            && shorts.starts_with(|ch: char| ch.is_ascii_alphabetic())
        {
            for ch in shorts.chars().take_while(char::is_ascii_alphabetic) {
                if !spec.shorts.contains(&ch) {
                    bad(format!("{} has no flag -{ch}", c.binary.name()));
                }
            }
        }
    }

    for (name, _) in &c.env {
        let interpolated = c.kubernetes
            && c.env.iter().any(|(_, v)| {
                v.as_deref()
                    .is_some_and(|v| v.contains(&format!("$({name})")))
            });
        if !spec.knows_env(c.binary, name) && !interpolated {
            bad(format!(
                "{} reads no environment variable {name}",
                c.binary.name()
            ));
        }
    }

    let (main, metrics) = c.listening(spec);
    let listening: BTreeSet<u16> = main.into_iter().chain(metrics).collect();
    for (name, port) in &c.ports {
        if !listening.contains(port) {
            bad(format!(
                "declares port {port} ({}) but {} listens on {listening:?}",
                name.as_deref().unwrap_or("unnamed"),
                c.binary.name()
            ));
        }
    }
    if c.kubernetes {
        for port in &listening {
            if !c.ports.iter().any(|(_, p)| p == port) {
                bad(format!(
                    "listens on {port} but does not declare it as a containerPort"
                ));
            }
        }
    }
    for probe in &c.probes {
        let Some(port) = probe.port.as_ref().and_then(|p| c.resolve(p)) else {
            bad(format!(
                "{} {}: no resolvable port",
                probe.field, probe.kind
            ));
            continue;
        };
        let ok = match probe.kind.as_str() {
            "grpc" => c.binary.grpc() && Some(port) == main,
            "httpGet" => Some(port) == metrics || (!c.binary.grpc() && Some(port) == main),
            "tcpSocket" => listening.contains(&port),
            _ => true,
        };
        if !ok {
            let api = if c.binary.grpc() { "gRPC" } else { "HTTP" };
            bad(format!(
                "{} {} on port {port}, but {} serves {api} on {main:?} and admin HTTP on {metrics:?}",
                probe.field,
                probe.kind,
                c.binary.name()
            ));
        }
    }
}

/// A URL a container is given must name a known endpoint: `endpoints` maps host → ports.
fn check_urls(
    c: &Container,
    endpoints: &BTreeMap<String, BTreeSet<u16>>,
    problems: &mut Vec<String>,
) {
    let mut urls = Vec::new();
    if c.binary == Binary::Gateway {
        urls.push(c.url("--tasks-url", "REDLINE_TASKS_URL"));
        urls.push(
            c.url("--ratelimit-url", "REDLINE_RATELIMIT_URL")
                .filter(|u| *u != "none"),
        );
    } else {
        urls.push(c.url("--redis-url", "REDIS_URL"));
    }
    for url in urls.into_iter().flatten() {
        let Some((host, port)) = host_port(url) else {
            problems.push(format!("{}: cannot read host and port of {url}", c.origin));
            continue;
        };
        if !endpoints
            .get(&host)
            .is_some_and(|ports| ports.contains(&port))
        {
            problems.push(format!(
                "{}: {url} names {host}:{port}, which no Service or compose service provides",
                c.origin
            ));
        }
    }
}

// === files ===

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every YAML document of a file, with merge keys (`<<:`) applied.
fn documents(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    documents_of(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn documents_of(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let mut value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        value.apply_merge().map_err(|e| e.to_string())?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// What the Kubernetes manifests under one directory define.
#[derive(Default)]
struct Manifests {
    containers: Vec<K8sContainer>,
    /// Service name → ports, for URL checks.
    endpoints: BTreeMap<String, BTreeSet<u16>>,
    services: Vec<Service>,
    /// Workload name → (pod template labels, its containers).
    workloads: BTreeMap<String, (Labels, Vec<Key>)>,
}

/// A Kubernetes Service.
struct Service {
    origin: String,
    selector: Labels,
    /// (port, targetPort).
    ports: Vec<(u16, PortRef)>,
}

fn labels(v: Option<&Value>) -> Labels {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((str_of(k)?, str_of(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Manifests {
    fn add(&mut self, origin: &str, doc: &Value, problems: &mut Vec<String>) {
        let kind = doc.get("kind").and_then(str_of).unwrap_or_default();
        let name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(str_of)
            .unwrap_or_default();
        match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                let template = doc.get("spec").and_then(|s| s.get("template"));
                let pod_labels = labels(
                    template
                        .and_then(|t| t.get("metadata"))
                        .and_then(|m| m.get("labels")),
                );
                let containers = template
                    .and_then(|t| t.get("spec"))
                    .and_then(|s| s.get("containers"))
                    .and_then(Value::as_sequence)
                    .cloned()
                    .unwrap_or_default();
                let entry = self.workloads.entry(name.clone()).or_default();
                entry.0.extend(pod_labels);
                for c in &containers {
                    let container = K8sContainer::from_yaml(&kind, &name, origin, c);
                    entry.1.push(container.key.clone());
                    self.containers.push(container);
                }
            }
            "Service" => {
                let spec = doc.get("spec");
                let selector = labels(spec.and_then(|s| s.get("selector")));
                let ports: Vec<(u16, PortRef)> = spec
                    .and_then(|s| s.get("ports"))
                    .and_then(Value::as_sequence)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|p| {
                                let PortRef::Number(port) =
                                    p.get("port").and_then(PortRef::from_yaml)?
                                else {
                                    return None;
                                };
                                let target = p
                                    .get("targetPort")
                                    .and_then(PortRef::from_yaml)
                                    .unwrap_or(PortRef::Number(port));
                                Some((port, target))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.endpoints
                    .entry(name.clone())
                    .or_default()
                    .extend(ports.iter().map(|(p, _)| *p));
                self.services.push(Service {
                    origin: format!("{origin}: Service/{name}"),
                    selector,
                    ports,
                });
            }
            "Kustomization" => {
                for patch in doc
                    .get("patches")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let Some(text) = patch.get("patch").and_then(str_of) else {
                        continue;
                    };
                    match documents_of(&text) {
                        // JSON 6902: a list of operations. Container changes belong in strategic-merge
                        // patches, which this test merges and checks.
                        Ok(docs) if docs.iter().any(Value::is_sequence) => {
                            if text.contains("/containers") {
                                problems.push(format!(
                                    "{origin}: a JSON 6902 patch changes containers; use a \
                                     strategic-merge patch file so the deploy test can check it"
                                ));
                            }
                        }
                        Ok(docs) => {
                            for d in &docs {
                                self.add(&format!("{origin} (inline patch)"), d, problems);
                            }
                        }
                        Err(e) => problems.push(format!("{origin}: inline patch: {e}")),
                    }
                }
            }
            _ => {}
        }
    }
}

// === tests ===

fn specs() -> BTreeMap<Binary, Spec> {
    Binary::ALL.into_iter().map(|b| (b, Spec::of(b))).collect()
}

/// Checks Kubernetes manifests; returns the problems and the binaries seen.
fn check_k8s(files: &[(String, Vec<Value>)]) -> (Vec<String>, BTreeSet<Binary>) {
    let specs = specs();
    let mut problems = Vec::new();
    let mut manifests = Manifests::default();
    for (origin, docs) in files {
        for doc in docs {
            manifests.add(origin, doc, &mut problems);
        }
    }
    // Complete containers (with an image) first; patches are merged onto them.
    let complete: BTreeMap<_, _> = manifests
        .containers
        .iter()
        .filter(|c| c.image.is_some())
        .map(|c| (c.key.clone(), c.clone()))
        .collect();
    let mut seen = BTreeSet::new();
    let mut effective: BTreeMap<Key, Vec<Container>> = BTreeMap::new();
    for c in &manifests.containers {
        let merged = match (&c.image, complete.get(&c.key)) {
            (Some(_), _) => c.clone(),
            (None, Some(base)) => c.merged_onto(base),
            (None, None) => {
                problems.push(format!(
                    "{}: patches a container no manifest defines",
                    c.origin
                ));
                continue;
            }
        };
        if let Some(container) = merged.redline(&mut problems) {
            seen.insert(container.binary);
            check_container(&container, &specs, &mut problems);
            check_urls(&container, &manifests.endpoints, &mut problems);
            effective.entry(c.key.clone()).or_default().push(container);
        }
    }
    for Service {
        origin,
        selector,
        ports,
    } in &manifests.services
    {
        let selected: BTreeSet<&Key> = manifests
            .workloads
            .values()
            .filter(|(pod, _)| {
                !selector.is_empty() && selector.iter().all(|(k, v)| pod.get(k) == Some(v))
            })
            .flat_map(|(_, keys)| keys)
            .collect();
        if selected.is_empty() {
            problems.push(format!(
                "{origin}: selector {selector:?} matches no workload"
            ));
            continue;
        }
        for (port, target) in ports {
            let redline: Vec<&Container> = selected
                .iter()
                .filter_map(|k| effective.get(*k))
                .flatten()
                .collect();
            if redline.is_empty() {
                continue; // Redis and other non-redline workloads.
            }
            for c in redline {
                let (main, metrics) = c.listening(&specs[&c.binary]);
                let listening: BTreeSet<u16> = main.into_iter().chain(metrics).collect();
                match c.resolve(target) {
                    Some(p) if listening.contains(&p) => {}
                    other => problems.push(format!(
                        "{origin}: port {port} targets {target:?} ({other:?}), but {} listens on \
                         {listening:?}",
                        c.origin
                    )),
                }
            }
        }
    }
    (problems, seen)
}

/// Checks a compose file; returns the problems and the binaries seen.
fn check_compose(root: &Path, doc: &Value) -> (Vec<String>, BTreeSet<Binary>) {
    let specs = specs();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return (vec!["docker-compose.yml: no services".to_owned()], seen);
    };
    let mut containers = Vec::new();
    let mut endpoints: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (name, svc) in services {
        let name = str_of(name).unwrap_or_default();
        let origin = format!("docker-compose.yml: service {name}");
        for volume in strings(svc.get("volumes")) {
            if let Some(source) = volume.split(':').next().filter(|s| s.starts_with('.'))
                && !root.join(source).exists()
            {
                problems.push(format!(
                    "{origin}: bind mount source {source} does not exist"
                ));
            }
        }
        let image = svc.get("image").and_then(str_of).unwrap_or_default();
        if !is_redline_image(&image) {
            // Redis and friends: reachable on their standard port inside the compose network.
            if image.starts_with("redis") {
                endpoints.entry(name).or_default().insert(6379);
            }
            continue;
        }
        let mut argv = strings(svc.get("entrypoint"));
        argv.extend(strings(svc.get("command")));
        let Some(binary) = argv.first().and_then(|p| Binary::from_program(p)) else {
            problems.push(format!(
                "{origin}: a redline service needs a command naming its binary, has {argv:?}"
            ));
            continue;
        };
        let env = match svc.get("environment") {
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((str_of(k)?, str_of(v))))
                .collect(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(str_of)
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (kv, None),
                })
                .collect(),
            _ => Vec::new(),
        };
        // Published ports `[ip:]host:container[/proto]` or `{target: N}`: the container side must listen.
        let mut ports = Vec::new();
        for p in svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let target = match p {
                Value::Mapping(_) => p.get("target").and_then(str_of),
                _ => str_of(p).and_then(|s| s.rsplit(':').next().map(str::to_owned)),
            };
            match target.and_then(|t| t.split('/').next().and_then(|t| t.parse().ok())) {
                Some(port) => ports.push((None, port)),
                None => problems.push(format!("{origin}: cannot read port {p:?}")),
            }
        }
        let container = Container {
            origin,
            binary,
            args: argv[1..].to_vec(),
            env,
            ports,
            probes: Vec::new(),
            kubernetes: false,
        };
        endpoints
            .entry(name)
            .or_default()
            .extend(container.listening(&specs[&binary]).0);
        seen.insert(binary);
        containers.push(container);
    }
    for c in &containers {
        check_container(c, &specs, &mut problems);
        check_urls(c, &endpoints, &mut problems);
    }
    (problems, seen)
}

fn report(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what} disagree with the binaries:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn kubernetes_manifests_match_the_binaries() {
    let root = repo_root();
    let mut paths = Vec::new();
    yaml_files(&root.join("k8s"), &mut paths);
    assert!(paths.len() >= 10, "expected the k8s/ tree, found {paths:?}");
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in &paths {
        let origin = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        match documents(path) {
            Ok(docs) => files.push((origin, docs)),
            Err(e) => problems.push(e),
        }
    }
    let (found, seen) = check_k8s(&files);
    problems.extend(found);
    report("k8s/ manifests", &problems);
    assert_eq!(
        seen,
        Binary::ALL.into_iter().collect(),
        "every binary is deployed"
    );
}

#[test]
fn compose_file_matches_the_binaries() {
    let root = repo_root();
    let docs = documents(&root.join("docker-compose.yml"));
    let doc = docs.as_ref().ok().and_then(|d| d.first());
    assert!(doc.is_some(), "docker-compose.yml: {docs:?}");
    let (problems, seen) = doc.map(|d| check_compose(&root, d)).unwrap_or_default();
    report("docker-compose.yml", &problems);
    assert_eq!(
        seen,
        Binary::ALL.into_iter().collect(),
        "every binary is composed"
    );
}

/// The checks catch what they are for: a misspelt flag or variable, a probe on the wrong port, a Service
/// aimed at a port nothing listens on.
#[test]
fn typos_are_caught() {
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: redline-worker}
spec:
  template:
    metadata: {labels: {app.kubernetes.io/name: redline-worker}}
    spec:
      containers:
        - name: worker
          image: registry.invalid/redline:1.2.3
          command: ["/usr/local/bin/redline-worker"]
          args: ["--concurency", "2", "-Q", "redline_tasks"]
          env:
            - {name: REDLINE_WORKER_SHUTDOWN_GRCE, value: 60s}
            - {name: PW, value: secret}
            - {name: REDIS_URL, value: "redis://:$(PW)@redis:6379/0"}
          readinessProbe:
            grpc: {port: 50051, service: readiness}
---
apiVersion: v1
kind: Service
metadata: {name: redis}
spec:
  selector: {app.kubernetes.io/name: redline-worker}
  ports: [{port: 6379, targetPort: 6380}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing}
spec:
  selector: {app.kubernetes.io/name: redline-taks}
  ports: [{port: 50051}]
"#;
    let docs = documents_of(manifest).unwrap_or_default();
    let (problems, _) = check_k8s(&[("inline".to_owned(), docs)]);
    let text = problems.join("\n");
    for expected in [
        "has no flag --concurency",
        "reads no environment variable REDLINE_WORKER_SHUTDOWN_GRCE",
        "readinessProbe grpc on port 50051",
        "port 6379 targets Number(6380)",
        "matches no workload",
    ] {
        assert!(
            text.contains(expected),
            "expected {expected:?} among:\n{text}"
        );
    }
    assert!(
        !text.contains("variable PW"),
        "PW only feeds REDIS_URL and is allowed:\n{text}"
    );
    assert!(
        !text.contains("-Q"),
        "-Q is the worker's short --queues:\n{text}"
    );
}
