//! What keeps one build's faults inside that build: a panic becomes the build's failure with its
//! message, and a template sees only an allow-listed part of the worker's environment.

use crate::pipeline::result::BuildResult;
use crate::worker::early_failure;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

/// The worker's environment variables a template's `env()` (and `{{env}}`) may read: the
/// harmless ones a template might name. Everything else (the worker's `AWS_*` credentials and
/// settings, `KILN_*`) stays out of templates, which other teams write.
pub const TEMPLATE_ENV: &[&str] = &["HOME", "LANG", "LC_ALL", "PATH", "TZ", "USER"];

/// The text of a caught panic.
pub(super) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// `fut`'s output, or the message of the panic that ended it.
pub(super) async fn caught<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(panic_message)
}

/// The result of a build that panicked at `step`: failed, not retryable (the same request would
/// panic again), with the panic's message.
pub(super) fn panicked(build_id: &str, step: &str, message: &str) -> BuildResult {
    tracing::error!(build_id = %build_id, step, panic = %message, "the build panicked: it fails, the worker goes on");
    early_failure(
        build_id,
        step,
        format!("kiln failed internally and stopped this build: {message}"),
        false,
    )
}

/// Fault injection for the panic test: `KILN_FAULT_PANIC=load` makes loading a build's template
/// panic, as a bug in the evaluator would.
pub(super) fn panic_if_asked() {
    if std::env::var("KILN_FAULT_PANIC").is_ok_and(|s| s == "load") {
        panic!("KILN_FAULT_PANIC: loading the template panics");
    }
}

/// The environment a template sees: the [`TEMPLATE_ENV`] variables of the worker's.
pub(super) fn template_env() -> std::collections::BTreeMap<String, String> {
    TEMPLATE_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_the_builds_failure_with_its_message() {
        let r: Result<u8, String> = caught(async { panic!("boom in the evaluator") }).await;
        let message = r.expect_err("the panic is caught");
        assert_eq!(message, "boom in the evaluator");
        let result = panicked("b-1", "validate", &message);
        assert_eq!(result.status, crate::pipeline::result::Status::Failed);
        let e = result.error.expect("an error");
        assert_eq!(e.step, "validate");
        assert!(!e.retryable);
        assert!(e.message.contains("boom in the evaluator"), "{}", e.message);
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let formatted: Result<u8, String> = caught(async { panic!("{} {}", "with", "args") }).await;
        assert_eq!(formatted, Err("with args".into()));
    }

    #[test]
    fn templates_see_only_allow_listed_variables() {
        let env = template_env();
        assert!(
            env.keys().all(|k| TEMPLATE_ENV.contains(&k.as_str())),
            "{env:?}"
        );
    }
}
