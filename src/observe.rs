//! Observability: the `tracing` subscriber for text (interactive) or JSON (daemon) logs.
//!
//! Spans carry the build id and the step; this module only decides how they are written.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for daemons and log collectors.
    Json,
}

/// Installs the global subscriber on stderr. `verbosity` 0 is `info`; each step up or down moves
/// one level (`-v` debug, `-vv` trace, `-q` warn, `-qq` error). `RUST_LOG` overrides it.
///
/// Side effects: sets the process-wide default subscriber. Calling it twice is harmless (the
/// second call changes nothing).
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("kiln={level},warn")));
    // Colour only on a terminal: log files and CI logs get plain text (NO_COLOR turns it off).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
