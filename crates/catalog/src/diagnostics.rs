//! The diagnostic task types every worker runs: for operators checking a deployment, and for tests and
//! benchmarks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::TaskType;
use crate::values::Seconds;

/// No arguments at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `redline.noop`: succeeds at once with a null result.
#[derive(Debug)]
pub struct Noop;

impl TaskType for Noop {
    const NAME: &'static str = "redline.noop";
    const DESCRIPTION: &'static str = "Does nothing and succeeds at once.";
    type Args = NoArgs;
    type Output = ();
}

/// `redline.echo`: returns its keyword arguments, whatever they are.
#[derive(Debug)]
pub struct Echo;

impl TaskType for Echo {
    const NAME: &'static str = "redline.echo";
    const DESCRIPTION: &'static str = "Returns its arguments as its result.";
    type Args = Map<String, Value>;
    type Output = Map<String, Value>;
}

/// `redline.sleep`: sleeps, reporting progress, and stops early when cancelled.
#[derive(Debug)]
pub struct Sleep;

/// Arguments of `redline.sleep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep.
    pub seconds: Seconds,
}

/// Result of `redline.sleep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SleepResult {
    /// How long it slept.
    pub slept: f64,
}

impl TaskType for Sleep {
    const NAME: &'static str = "redline.sleep";
    const DESCRIPTION: &'static str =
        "Sleeps, reporting progress every second; honours cancellation.";
    type Args = SleepArgs;
    type Output = SleepResult;
}

/// `redline.fail`: fails with a message, retryable unless told otherwise.
#[derive(Debug)]
pub struct Fail;

/// Arguments of `redline.fail`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// The error message.
    pub message: Option<String>,
    /// Whether the error may be retried (default true).
    pub retryable: Option<bool>,
}

impl TaskType for Fail {
    const NAME: &'static str = "redline.fail";
    const DESCRIPTION: &'static str = "Fails with a message; retryable unless told otherwise.";
    type Args = FailArgs;
    // It never succeeds.
    type Output = ();
}
