//! The subcommands of `kiln`, one module each: each parses what `main` hands it and calls the
//! library.

pub(crate) mod build;
pub(crate) mod gc;
pub(crate) mod submit;
pub(crate) mod template;
pub(crate) mod worker;

pub(crate) use super::{BackendKind, SubmitArgs, TemplateArgs, WorkerArgs};
