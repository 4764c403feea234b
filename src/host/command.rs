//! Commands on the host and in the chroot: `/bin/sh -c` children in their own process group,
//! output streamed line by line to a sink, killed with their whole group on cancellation.

use super::HostError;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines of output kept for an error message.
pub const TAIL_LINES: usize = 20;
/// How long to keep reading output after the command exits: a background process it left may
/// hold the pipe open forever, so output after this is dropped rather than waited for.
const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// Variables of kiln's own environment a command inherits; everything else (`AWS_*` credentials
/// and endpoints, `KILN_*` settings, a data source's secrets exported by a wrapper) is left out.
/// A command's own variables (`ShellCommand::env`: the template's `environment_vars`, `PACKER_*`)
/// come on top.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL",
];

/// Whether kiln's own variable `name` reaches a command (see [`INHERITED_ENV`]; `LC_*` too).
pub fn inherited(name: &str) -> bool {
    INHERITED_ENV.contains(&name) || name.starts_with("LC_")
}

/// Where command output goes: `(source, line)`.
pub type Sink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One command to run with `/bin/sh -c`.
#[derive(Debug, Clone)]
pub struct ShellCommand {
    /// Who runs it, for logs and errors (e.g. `pre_mount_commands[1]`).
    pub name: String,
    /// The shell text.
    pub script: String,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The text to show in errors (sensitive values masked).
    pub display: String,
    /// Exit codes that count as success.
    pub valid_exit_codes: Vec<i32>,
}

impl ShellCommand {
    /// A command named `name` running `script`, successful on exit code 0.
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        let script = script.into();
        Self {
            name: name.into(),
            display: script.clone(),
            script,
            env: Vec::new(),
            valid_exit_codes: vec![0],
        }
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// Runs `cmd` to completion (or cancellation), streaming output to `sink`. The command gets an
/// allow-listed environment ([`INHERITED_ENV`]) plus its own variables.
///
/// Side effects: whatever the command does. On cancellation the whole process group is killed and
/// `HostError::Cancelled` returned. Not idempotent in general (it runs the command again).
pub async fn run(
    cmd: &ShellCommand,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<(), HostError> {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&cmd.script)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(inherited)))
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If kiln itself is killed (SIGKILL: no undo runs), the command dies with it, and with the
    // command the sandbox's bubblewrap (`--die-with-parent`) and everything in the build's PID
    // namespace: nothing of the build keeps running against a volume the next attempt reclaims.
    // (The signal follows the thread that started the command: a runtime worker thread, which
    // lives as long as kiln.)
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and getppid.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            // kiln died between the fork and the prctl: do not run at all.
            if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
                return Err(std::io::Error::other(
                    "kiln exited before the command started",
                ));
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(HostError::io("starting /bin/sh for", cmd.name.clone()))?;
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let mut readers = Vec::new();
    let streams: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for stream in streams {
        let sink = Arc::clone(sink);
        let tail = Arc::clone(&tail);
        let name = cmd.name.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink(&name, &line);
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    while t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
            }
        }));
    }
    let status = tokio::select! {
        s = child.wait() => s.map_err(HostError::io("waiting for", cmd.name.clone()))?,
        _ = cancel.cancelled() => {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            for r in readers {
                r.abort();
            }
            return Err(HostError::Cancelled(format!("running {}", cmd.name)));
        }
    };
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, r).await.is_err() {
            abort.abort();
        }
    }
    let code = status.code().unwrap_or(-1);
    if cmd.valid_exit_codes.contains(&code) {
        return Ok(());
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Err(HostError::Command {
        name: cmd.name.clone(),
        command: cmd.display.clone(),
        code,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> (Sink, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = Arc::clone(&lines);
        (
            Arc::new(move |_: &str, line: &str| l2.lock().unwrap().push(line.to_owned())),
            lines,
        )
    }

    #[tokio::test]
    async fn output_exit_codes_and_background_children() {
        let (s, lines) = sink();
        let cancel = CancellationToken::new();
        run(
            &ShellCommand::new("ok", "echo one; echo two >&2"),
            &s,
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(lines.lock().unwrap().len(), 2);
        let err = run(
            &ShellCommand::new("bad", "echo last words; exit 3"),
            &s,
            &cancel,
        )
        .await
        .unwrap_err();
        match err {
            HostError::Command { code, tail, .. } => {
                assert_eq!(code, 3);
                assert!(tail.contains("last words"));
            }
            other => panic!("{other}"),
        }
        let mut c = ShellCommand::new("ok3", "exit 3");
        c.valid_exit_codes = vec![0, 3];
        run(&c, &s, &cancel).await.unwrap();
        // A background child holding stdout does not hang the run (a generous deadline, not a
        // measurement: without the fix the run waits for the child's 30 s).
        tokio::time::timeout(
            Duration::from_secs(20),
            run(
                &ShellCommand::new("bg", "sleep 30 & echo started"),
                &s,
                &cancel,
            ),
        )
        .await
        .expect("the run returns while its background child holds stdout")
        .unwrap();
        let _ = std::process::Command::new("pkill")
            .args(["-f", "^sleep 30$"])
            .status();
        assert_eq!(shell_quote("it's"), "'it'\"'\"'s'");
    }

    /// kiln's own credentials and settings never reach a command; its own variables do.
    #[tokio::test]
    async fn environment_is_allow_listed() {
        // SAFETY: a variable only this test reads; set before the child is spawned.
        unsafe {
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "kiln-test-secret");
            std::env::set_var("KILN_TEST_SETTING", "kiln-test-setting");
        }
        let (s, lines) = sink();
        let mut c = ShellCommand::new("env", "env");
        c.env = vec![("FROM_TEMPLATE".into(), "yes".into())];
        run(&c, &s, &CancellationToken::new()).await.unwrap();
        let out = lines.lock().unwrap().join("\n");
        assert!(!out.contains("kiln-test-secret"), "{out}");
        assert!(!out.contains("kiln-test-setting"), "{out}");
        assert!(out.contains("FROM_TEMPLATE=yes"), "{out}");
        assert!(out.contains("PATH="), "{out}");
    }

    /// Cancelling kills the whole process group: the shell and a background child it started
    /// (which a kill of the shell alone would leave running).
    #[tokio::test]
    async fn cancel_kills_the_group() {
        let (s, _) = sink();
        let cancel = CancellationToken::new();
        let pidfile = std::env::temp_dir().join(format!("kiln-cancel-{}", std::process::id()));
        let _ = std::fs::remove_file(&pidfile);
        let script = format!(
            "sleep 600 & echo $! > {p}.tmp && mv {p}.tmp {p}; sleep 601",
            p = pidfile.display()
        );
        let c2 = cancel.clone();
        let watch = pidfile.clone();
        // Cancel once the background child exists (a condition, not a pause).
        tokio::spawn(async move {
            while !watch.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c2.cancel();
        });
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            run(&ShellCommand::new("long", &script), &s, &cancel),
        )
        .await
        .expect("cancellation ends the run")
        .unwrap_err();
        assert!(matches!(err, HostError::Cancelled(_)), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid of the background child")
            .trim()
            .parse()
            .expect("pid");
        let _ = std::fs::remove_file(&pidfile);
        // Dead (or a zombie waiting for init): never running or sleeping.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| st.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten();
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the background child {pid} survived the cancellation (state {state:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
