//! The task catalogue of redline: every task type the suite ships, declared once, with typed arguments and
//! result, in a crate light enough for TaskService and the gateway to link (no columnar libraries).
//!
//! - [`spec`]: the [`TaskType`] declaration, its data form [`TaskSpec`] (JSON Schemas, positional order,
//!   defaults) and submit-time validation, and the [`Catalog`];
//! - [`values`]: the argument value types and their rules (paths, formats, tickers, dates, ranges), the only
//!   implementation of each;
//! - [`diagnostics`]: `redline.noop`, `echo`, `sleep`, `fail`;
//! - [`data`]: REDLINE's data tasks.
//!
//! The worker implements a handler for each type (`redline_worker::Handler`), TaskService validates
//! submissions against [`builtin`] (plus types workers publish), `ListTaskTypes` serves it, and the gateway
//! derives its routes' required fields and its OpenAPI request schemas from it. Adding an argument to a task is
//! a field on its argument struct; the handler that uses it is the only other code to touch.

pub mod data;
pub mod diagnostics;
pub mod spec;
pub mod values;

pub use spec::{
    CELERY_PREFIX, Catalog, DEFAULT_MAX_RETRIES, DEFAULT_TIME_LIMIT, FieldViolation, TaskSpec,
    TaskType,
};

/// Every task type this build declares: the diagnostics and REDLINE's data tasks.
pub fn builtin() -> Catalog {
    use data::{Analysis, Bulk, Conversion, Download, Upload};
    use diagnostics::{Echo, Fail, Noop, Sleep};
    Catalog::new(vec![
        TaskSpec::of::<Noop>(),
        TaskSpec::of::<Echo>(),
        TaskSpec::of::<Sleep>(),
        TaskSpec::of::<Fail>(),
        TaskSpec::of::<Conversion>(),
        TaskSpec::of::<Download>(),
        TaskSpec::of::<Analysis>(),
        TaskSpec::of::<Upload>(),
        TaskSpec::of::<Bulk>(),
    ])
}
