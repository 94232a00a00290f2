//! The gRPC surface: `redline.ratelimit.v1.RateLimitService` and Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService`. Wire types stop here; the engine sees domain types only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};

use redline_proto::envoy::config::core::v3::HeaderValue;
use redline_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use redline_proto::envoy::service::ratelimit::v3 as envoy;
use redline_proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit,
};
use redline_proto::envoy::r#type::v3::RateLimitUnit;
use redline_proto::redline::ratelimit::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::limiter::{
    Decision, DecisionRequest, DescriptorRequest, LimitError, LimitResult, Limiter, Source,
    UnknownDomain,
};
use crate::limits::{Algorithm, FailureMode, LimitDef, Mode, default_name, parse_flask_limits};

// === Errors ===

/// The one mapping from engine errors to gRPC statuses.
impl From<LimitError> for Status {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::InvalidArgument(msg) => Status::invalid_argument(msg),
            LimitError::UnknownDomain(domain) => {
                Status::invalid_argument(format!("unknown domain {domain:?}"))
            }
            // UNAVAILABLE, never an OK answer with `overall_code: UNKNOWN`: Envoy lets UNKNOWN through whatever
            // its `failure_mode_deny` says, while a gRPC error lets the caller's own failure policy decide.
            LimitError::Unavailable(_) => Status::unavailable("rate-limit store unavailable"),
            // Details stay in the logs; the caller can do nothing with them.
            LimitError::Store(_) => Status::internal("rate-limit store error"),
            // The operator who asked for the reload needs the file, line and reason.
            LimitError::Config(e) => Status::failed_precondition(e.to_string()),
            LimitError::NoConfigFile => {
                Status::failed_precondition("the service runs without a rule file (--config)")
            }
        }
    }
}

/// Logs server-side failures with their cause chain, then converts.
fn fail(e: LimitError) -> Status {
    match &e {
        // Outages are logged once per transition by the limiter; per decision they would flood the logs.
        LimitError::Unavailable(cause) => {
            tracing::debug!(error = %e, cause = %cause, "decision failed");
        }
        LimitError::Store(cause) => tracing::warn!(error = %e, cause = %cause, "decision failed"),
        LimitError::Config(_) => tracing::warn!(error = %e, "rule reload rejected"),
        LimitError::InvalidArgument(_)
        | LimitError::UnknownDomain(_)
        | LimitError::NoConfigFile => {
            tracing::debug!(error = %e, "request rejected");
        }
    }
    e.into()
}

// === Conversions ===

fn pb_duration(ms: u64) -> prost_types::Duration {
    // Windows are at most ten years: always representable.
    prost_types::Duration::try_from(std::time::Duration::from_millis(ms)).unwrap_or_default()
}

fn algorithm_to_pb(a: Algorithm) -> pb::Algorithm {
    match a {
        Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
        Algorithm::SlidingWindow => pb::Algorithm::SlidingWindow,
        Algorithm::Gcra => pb::Algorithm::Gcra,
    }
}

fn failure_mode_to_pb(m: FailureMode) -> pb::FailureMode {
    match m {
        FailureMode::Error => pb::FailureMode::Error,
        FailureMode::Open => pb::FailureMode::Open,
        FailureMode::Closed => pb::FailureMode::Closed,
        FailureMode::Local => pb::FailureMode::Local,
    }
}

fn source_to_pb(s: Source) -> pb::DecisionSource {
    match s {
        Source::Redis => pb::DecisionSource::Redis,
        Source::FailedOpen => pb::DecisionSource::FailedOpen,
        Source::FailedClosed => pb::DecisionSource::FailedClosed,
        Source::Local => pb::DecisionSource::Local,
    }
}

fn invalid(msg: String) -> LimitError {
    LimitError::InvalidArgument(msg)
}

fn limit_from_pb(spec: &pb::LimitSpec) -> Result<LimitDef, LimitError> {
    let window = spec
        .window
        .ok_or_else(|| invalid("a caller-supplied limit needs a window".to_owned()))?;
    let window = Duration::try_from(window)
        .map_err(|_| invalid("a limit's window must be positive".to_owned()))?;
    let window_ms = u64::try_from(window.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    let algorithm = match pb::Algorithm::try_from(spec.algorithm) {
        Ok(pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow) => Algorithm::FixedWindow,
        Ok(pb::Algorithm::SlidingWindow) => Algorithm::SlidingWindow,
        Ok(pb::Algorithm::Gcra) => Algorithm::Gcra,
        Err(_) => return Err(invalid(format!("unknown algorithm {}", spec.algorithm))),
    };
    let failure_mode = match pb::FailureMode::try_from(spec.failure_mode) {
        Ok(pb::FailureMode::Unspecified | pb::FailureMode::Error) => FailureMode::Error,
        Ok(pb::FailureMode::Open) => FailureMode::Open,
        Ok(pb::FailureMode::Closed) => FailureMode::Closed,
        Ok(pb::FailureMode::Local) => FailureMode::Local,
        Err(_) => {
            return Err(invalid(format!(
                "unknown failure mode {}",
                spec.failure_mode
            )));
        }
    };
    Ok(LimitDef {
        name: if spec.name.is_empty() {
            default_name(spec.limit, window_ms)
        } else {
            spec.name.clone()
        },
        limit: spec.limit,
        window_ms,
        algorithm,
        mode: Mode::from_flags(spec.shadow_mode, spec.quota_mode),
        failure_mode,
    })
}

fn caller_limits(
    specs: &[pb::LimitSpec],
    expression: &str,
) -> Result<Option<Vec<LimitDef>>, LimitError> {
    if specs.is_empty() && expression.trim().is_empty() {
        return Ok(None);
    }
    let mut defs = specs
        .iter()
        .map(limit_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    if !expression.trim().is_empty() {
        defs.extend(
            parse_flask_limits(expression, Algorithm::FixedWindow)
                .map_err(|e| invalid(e.to_string()))?,
        );
    }
    Ok(Some(defs))
}

/// Common addressing of Check, InspectKey and ResetKey.
struct Target<'a> {
    domain: &'a str,
    descriptors: &'a [pb::Descriptor],
    key: &'a str,
    limits: &'a [pb::LimitSpec],
    expression: &'a str,
}

fn to_decision_request(
    t: &Target<'_>,
    cost: u64,
    dry_run: bool,
) -> Result<DecisionRequest, LimitError> {
    let mut descriptors = Vec::with_capacity(t.descriptors.len() + 1);
    for d in t.descriptors {
        descriptors.push(DescriptorRequest {
            entries: d
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect(),
            limits: caller_limits(&d.limits, &d.limit_expression)?,
            cost,
        });
    }
    if t.key.is_empty() {
        if !t.limits.is_empty() || !t.expression.is_empty() {
            return Err(invalid(
                "`limits` and `limit_expression` apply to `key`, which is empty".to_owned(),
            ));
        }
    } else {
        descriptors.push(DescriptorRequest {
            entries: vec![("key".to_owned(), t.key.to_owned())],
            limits: caller_limits(t.limits, t.expression)?,
            cost,
        });
    }
    Ok(DecisionRequest {
        domain: t.domain.to_owned(),
        descriptors,
        dry_run,
        unknown_domain: UnknownDomain::Reject,
    })
}

fn status_to_pb(l: &LimitResult) -> pb::LimitStatus {
    pb::LimitStatus {
        name: l.def.name.clone(),
        limit: l.def.limit,
        remaining: l.verdict.remaining,
        reset_after: Some(pb_duration(l.verdict.reset_after_ms)),
        window: Some(pb_duration(l.def.window_ms)),
        algorithm: algorithm_to_pb(l.def.algorithm).into(),
        refused: !l.verdict.allowed,
        shadow_mode: l.def.mode == Mode::Shadow,
        quota_mode: l.def.mode == Mode::Quota,
        descriptor_index: u32::try_from(l.descriptor_index).unwrap_or(u32::MAX),
        source: source_to_pb(l.source).into(),
        retry_after: (!l.verdict.allowed).then(|| pb_duration(l.verdict.retry_after_ms)),
    }
}

fn check_response(d: &Decision) -> pb::CheckResponse {
    let refused = d.refused_by().filter(|_| !d.allowed);
    pb::CheckResponse {
        allowed: d.allowed,
        limits: d.limits.iter().map(status_to_pb).collect(),
        refused_by: refused.map(|l| l.def.name.clone()).unwrap_or_default(),
        retry_after: refused.map(|l| pb_duration(l.verdict.retry_after_ms)),
        degraded: d.degraded,
    }
}

fn counters(limiter: &Limiter) -> pb::DecisionCounters {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &limiter.stats;
    pb::DecisionCounters {
        redis: stats.redis.load(Relaxed),
        failed_open: stats.failed_open.load(Relaxed),
        failed_closed: stats.failed_closed.load(Relaxed),
        local: stats.local.load(Relaxed),
        unavailable: stats.unavailable.load(Relaxed),
        local_keys: u64::try_from(limiter.local_keys()).unwrap_or(u64::MAX),
    }
}

// === redline.ratelimit.v1 ===

/// Most decisions of one CheckStream in progress at once. Past it the service stops reading the stream, and
/// HTTP/2 flow control holds the caller back.
const STREAM_IN_FLIGHT: usize = 256;

/// `redline.ratelimit.v1.RateLimitService`.
#[derive(Debug, Clone)]
pub struct RedlineService {
    limiter: Arc<Limiter>,
    /// Cancelled when the server stops accepting calls: CheckStream calls then end, or they would hold the
    /// drain open for as long as their callers keep them.
    closing: CancellationToken,
}

impl RedlineService {
    /// Serves decisions from `limiter`; streams end once `closing` is cancelled.
    pub fn new(limiter: Arc<Limiter>, closing: CancellationToken) -> Self {
        Self { limiter, closing }
    }
}

/// Check's work, for Check and for each request of CheckStream.
async fn decide_check(
    limiter: &Limiter,
    r: &pb::CheckRequest,
) -> Result<pb::CheckResponse, LimitError> {
    let cost = if r.cost == 0 { 1 } else { r.cost };
    let target = Target {
        domain: &r.domain,
        descriptors: &r.descriptors,
        key: &r.key,
        limits: &r.limits,
        expression: &r.limit_expression,
    };
    let req = to_decision_request(&target, cost, r.dry_run)?;
    Ok(check_response(&limiter.decide(&req).await?))
}

/// One CheckStream reply: the decision, or the status Check would have answered, carried in the message so
/// that one bad request does not end the stream.
fn stream_reply(result: Result<pb::CheckResponse, LimitError>) -> pb::CheckStreamResponse {
    use pb::check_stream_response::Result as Reply;
    let reply = match result {
        Ok(response) => Reply::Response(response),
        Err(e) => {
            let status = fail(e);
            Reply::Error(redline_proto::google::rpc::Status {
                code: status.code() as i32,
                message: status.message().to_owned(),
                details: Vec::new(),
            })
        }
    };
    pb::CheckStreamResponse {
        result: Some(reply),
    }
}

/// The replies of a CheckStream call.
pub type CheckReplies = Pin<Box<dyn Stream<Item = Result<pb::CheckStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::rate_limit_service_server::RateLimitService for RedlineService {
    // Debug level: every call already has its `grpc` span, and a second one per decision costs more than
    // the decision's own work in the service.
    #[tracing::instrument(level = "debug", skip_all, fields(domain = %request.get_ref().domain))]
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        decide_check(&self.limiter, request.get_ref())
            .await
            .map(Response::new)
            .map_err(fail)
    }

    type CheckStreamStream = CheckReplies;

    async fn check_stream(
        &self,
        request: Request<Streaming<pb::CheckStreamRequest>>,
    ) -> Result<Response<CheckReplies>, Status> {
        // The requests as read, then, if the server is closing, one UNAVAILABLE in place of the rest. Every
        // item goes through the same ordered buffer below, so that error comes after the replies of every
        // request read before it.
        let requests = futures::stream::unfold(
            Some((request.into_inner(), self.closing.clone())),
            |state| async move {
                let (mut incoming, closing) = state?;
                tokio::select! {
                    biased;
                    () = closing.cancelled() => {
                        Some((Err(Status::unavailable("the server is shutting down")), None))
                    }
                    item = incoming.next() => item.map(|item| (item, Some((incoming, closing)))),
                }
            },
        );
        let limiter = self.limiter.clone();
        let replies = requests
            .map(move |item| {
                let limiter = limiter.clone();
                async move {
                    // A message that does not decode ends the call with its status: the stream can no
                    // longer be trusted to line replies up with requests.
                    let r = item?.request.unwrap_or_default();
                    Ok(stream_reply(decide_check(&limiter, &r).await))
                }
            })
            // In request order, so the caller needs no correlation id: the n-th reply answers the n-th request.
            .buffered(STREAM_IN_FLIGHT);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn list_rules(
        &self,
        _request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let rules = self.limiter.rules();
        let listed = rules
            .list()
            .into_iter()
            .map(|r| {
                let path = r
                    .path
                    .into_iter()
                    .map(|(key, value)| pb::Entry { key, value })
                    .collect();
                match r.rule {
                    Some(rule) => pb::Rule {
                        domain: r.domain,
                        path,
                        name: rule.def.name.clone(),
                        limit: rule.def.limit,
                        window: Some(pb_duration(rule.def.window_ms)),
                        algorithm: algorithm_to_pb(rule.def.algorithm).into(),
                        failure_mode: failure_mode_to_pb(rule.def.failure_mode).into(),
                        shadow_mode: rule.def.mode == Mode::Shadow,
                        quota_mode: rule.def.mode == Mode::Quota,
                        unlimited: false,
                        replaces: rule.replaces.clone(),
                    },
                    None => pb::Rule {
                        domain: r.domain,
                        path,
                        unlimited: true,
                        ..pb::Rule::default()
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::ListRulesResponse {
            rules: listed,
            config_path: self
                .limiter
                .config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            loaded_at: rules.loaded_at.map(prost_types::Timestamp::from),
            store_available: self.limiter.store_available(),
            counters: Some(counters(&self.limiter)),
        }))
    }

    async fn inspect_key(
        &self,
        request: Request<pb::InspectKeyRequest>,
    ) -> Result<Response<pb::InspectKeyResponse>, Status> {
        let r = request.into_inner();
        let target = Target {
            domain: &r.domain,
            descriptors: &r.descriptors,
            key: &r.key,
            limits: &r.limits,
            expression: &r.limit_expression,
        };
        let req = to_decision_request(&target, 0, true).map_err(fail)?;
        let decision = self.limiter.inspect(&req).await.map_err(fail)?;
        Ok(Response::new(pb::InspectKeyResponse {
            limits: decision.limits.iter().map(status_to_pb).collect(),
        }))
    }

    async fn reset_key(
        &self,
        request: Request<pb::ResetKeyRequest>,
    ) -> Result<Response<pb::ResetKeyResponse>, Status> {
        let r = request.into_inner();
        let target = Target {
            domain: &r.domain,
            descriptors: &r.descriptors,
            key: &r.key,
            limits: &r.limits,
            expression: &r.limit_expression,
        };
        let req = to_decision_request(&target, 0, true).map_err(fail)?;
        let removed = self.limiter.reset(&req).await.map_err(fail)?;
        tracing::info!(domain = %r.domain, removed, "counters reset");
        Ok(Response::new(pb::ResetKeyResponse { removed }))
    }

    async fn reload_config(
        &self,
        _request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let rules = self.limiter.reload().map_err(fail)?;
        let rule_count = u32::try_from(rules.list().len()).unwrap_or(u32::MAX);
        tracing::info!(rule_count, "rules reloaded on request");
        Ok(Response::new(pb::ReloadConfigResponse {
            rule_count,
            loaded_at: rules.loaded_at.map(prost_types::Timestamp::from),
        }))
    }
}

// === envoy.service.ratelimit.v3 ===

/// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, wire-compatible with Envoy's `ratelimit`
/// HTTP and network filters.
#[derive(Debug, Clone)]
pub struct EnvoyService {
    limiter: Arc<Limiter>,
}

impl EnvoyService {
    /// Serves Envoy from `limiter`.
    pub fn new(limiter: Arc<Limiter>) -> Self {
        Self { limiter }
    }
}

fn override_limit(
    o: &redline_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride,
) -> Result<LimitDef, LimitError> {
    let window_ms: u64 = match RateLimitUnit::try_from(o.unit) {
        Ok(RateLimitUnit::Second) => 1_000,
        Ok(RateLimitUnit::Minute) => 60_000,
        Ok(RateLimitUnit::Hour) => 3_600_000,
        Ok(RateLimitUnit::Day) => 86_400_000,
        Ok(RateLimitUnit::Month) => 30 * 86_400_000,
        Ok(RateLimitUnit::Year) => 365 * 86_400_000,
        Ok(RateLimitUnit::Unknown) | Err(_) => {
            return Err(invalid("a limit override needs a known unit".to_owned()));
        }
    };
    let limit = u64::from(o.requests_per_unit);
    Ok(LimitDef {
        name: default_name(limit, window_ms),
        limit,
        window_ms,
        algorithm: Algorithm::FixedWindow,
        mode: Mode::Enforced,
        failure_mode: FailureMode::Error,
    })
}

fn envoy_descriptor(
    d: &RateLimitDescriptor,
    request_hits: u64,
) -> Result<DescriptorRequest, LimitError> {
    Ok(DescriptorRequest {
        entries: d
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect(),
        limits: d
            .limit
            .as_ref()
            .map(override_limit)
            .transpose()?
            .map(|l| vec![l]),
        // An explicit per-descriptor 0 means "check only" (envoyproxy/ratelimit).
        cost: d.hits_addend.unwrap_or(request_hits),
    })
}

fn envoy_unit(window_ms: u64) -> (Unit, u64) {
    match window_ms {
        1_000 => (Unit::Second, 1),
        60_000 => (Unit::Minute, 1),
        3_600_000 => (Unit::Hour, 1),
        86_400_000 => (Unit::Day, 1),
        604_800_000 => (Unit::Week, 1),
        2_592_000_000 => (Unit::Month, 1),
        31_536_000_000 => (Unit::Year, 1),
        // Envoy cannot express "per 30 seconds": report UNKNOWN; duration_until_reset stays exact.
        _ => (Unit::Unknown, 1),
    }
}

/// The limit that speaks for a set: the refusal with the longest wait, else the least remaining.
fn most_restrictive<'a>(
    d: &Decision,
    limits: impl Iterator<Item = &'a LimitResult>,
) -> Option<&'a LimitResult> {
    limits.min_by_key(|l| {
        let refusing = d.refuses(l);
        (
            !refusing,
            if refusing {
                u64::MAX - l.verdict.retry_after_ms
            } else {
                l.verdict.remaining
            },
        )
    })
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    }
}

/// envoyproxy/ratelimit's dynamic metadata for quota mode, in its field names: the request's domain and
/// descriptors, `quotaModeEnabled`, and `quotaModeViolations`, the indices of the descriptors whose quota is
/// spent while the request was still admitted (a router can then send it to a backend with quota left).
/// Present only when a quota-mode limit applied, so other responses stay as small as before.
fn quota_metadata(d: &Decision, r: &envoy::RateLimitRequest) -> Option<prost_types::Struct> {
    use prost_types::value::Kind;
    let value = |kind| prost_types::Value { kind: Some(kind) };
    if !d.limits.iter().any(|l| l.def.mode == Mode::Quota) {
        return None;
    }
    let descriptors = r
        .descriptors
        .iter()
        .map(|desc| {
            let entries = desc
                .entries
                .iter()
                .map(|e| value(Kind::StringValue(format!("{}={}", e.key, e.value))))
                .collect();
            let fields = [(
                "entries".to_owned(),
                value(Kind::ListValue(prost_types::ListValue { values: entries })),
            )];
            value(Kind::StructValue(prost_types::Struct {
                fields: fields.into_iter().collect(),
            }))
        })
        .collect();
    let mut violations: Vec<usize> = d.spent_quotas().map(|l| l.descriptor_index).collect();
    violations.dedup();
    let mut fields = std::collections::BTreeMap::from([
        (
            "domain".to_owned(),
            value(Kind::StringValue(r.domain.clone())),
        ),
        (
            "descriptors".to_owned(),
            value(Kind::ListValue(prost_types::ListValue {
                values: descriptors,
            })),
        ),
        ("quotaModeEnabled".to_owned(), value(Kind::BoolValue(true))),
    ]);
    if r.hits_addend > 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            value(Kind::NumberValue(f64::from(r.hits_addend))),
        );
    }
    if !violations.is_empty() {
        let values = violations
            .into_iter()
            .map(|i| value(Kind::NumberValue(i as f64)))
            .collect();
        fields.insert(
            "quotaModeViolations".to_owned(),
            value(Kind::ListValue(prost_types::ListValue { values })),
        );
    }
    Some(prost_types::Struct { fields })
}

fn envoy_response(d: &Decision, r: &envoy::RateLimitRequest) -> envoy::RateLimitResponse {
    let descriptors = r.descriptors.len();
    let mut statuses = Vec::with_capacity(descriptors);
    for index in 0..descriptors {
        let mine = || d.limits.iter().filter(move |l| l.descriptor_index == index);
        let over = mine().any(|l| d.refuses(l));
        let code = if over { Code::OverLimit } else { Code::Ok };
        let status = match most_restrictive(d, mine()) {
            Some(l) => {
                let (unit, _) = envoy_unit(l.def.window_ms);
                DescriptorStatus {
                    code: code.into(),
                    current_limit: Some(RateLimit {
                        name: l.def.name.clone(),
                        requests_per_unit: u32::try_from(l.def.limit).unwrap_or(u32::MAX),
                        unit: unit.into(),
                    }),
                    limit_remaining: u32::try_from(l.verdict.remaining).unwrap_or(u32::MAX),
                    duration_until_reset: Some(pb_duration(l.verdict.reset_after_ms)),
                    quota: None,
                }
            }
            None => DescriptorStatus {
                code: code.into(),
                current_limit: None,
                // envoyproxy/ratelimit reports unlimited descriptors with the largest remaining count.
                limit_remaining: if d.unlimited.get(index).copied().unwrap_or(false) {
                    u32::MAX
                } else {
                    0
                },
                duration_until_reset: None,
                quota: None,
            },
        };
        statuses.push(status);
    }
    let mut headers = Vec::new();
    if let Some(l) = most_restrictive(d, d.limits.iter()) {
        let window_s = l.def.window_ms.div_ceil(1000);
        headers.push(header(
            "x-ratelimit-limit",
            format!("{}, {};w={window_s}", l.def.limit, l.def.limit),
        ));
        headers.push(header(
            "x-ratelimit-remaining",
            l.verdict.remaining.to_string(),
        ));
        headers.push(header(
            "x-ratelimit-reset",
            l.verdict.reset_after_ms.div_ceil(1000).to_string(),
        ));
        if !d.allowed {
            headers.push(header(
                "retry-after",
                l.verdict.retry_after_ms.div_ceil(1000).max(1).to_string(),
            ));
        }
    }
    envoy::RateLimitResponse {
        overall_code: if d.allowed { Code::Ok } else { Code::OverLimit }.into(),
        statuses,
        response_headers_to_add: headers,
        dynamic_metadata: quota_metadata(d, r),
        ..envoy::RateLimitResponse::default()
    }
}

#[tonic::async_trait]
impl envoy::rate_limit_service_server::RateLimitService for EnvoyService {
    #[tracing::instrument(level = "debug", skip_all, fields(domain = %request.get_ref().domain))]
    async fn should_rate_limit(
        &self,
        request: Request<envoy::RateLimitRequest>,
    ) -> Result<Response<envoy::RateLimitResponse>, Status> {
        let r = request.into_inner();
        if r.domain.is_empty() {
            return Err(fail(invalid("domain must not be empty".to_owned())));
        }
        // Unset and 0 both mean one hit (envoyproxy/ratelimit and Limitador agree).
        let hits = u64::from(r.hits_addend.max(1));
        let descriptors = r
            .descriptors
            .iter()
            .map(|d| envoy_descriptor(d, hits))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let req = DecisionRequest {
            domain: r.domain.clone(),
            descriptors,
            dry_run: false,
            unknown_domain: UnknownDomain::Allow,
        };
        let decision = self.limiter.decide(&req).await.map_err(fail)?;
        Ok(Response::new(envoy_response(&decision, &r)))
    }
}
