//! A Lambda Runtime API on 127.0.0.1 for the real `kiln-trigger` process: the function polls
//! `/runtime/invocation/next` as it does in Lambda, and each `invoke` hands it one event and
//! returns what it answered (its response, or its error).

use crate::support::{Emulator, repo_root, unique};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>>;

/// The Runtime API and the function process it serves (killed when dropped).
pub(crate) struct Lambda {
    events: mpsc::UnboundedSender<(String, Value)>,
    pending: Pending,
    child: Option<Child>,
    log: std::path::PathBuf,
}

/// An event fixture from tests/fixtures/events with its placeholders replaced.
pub(crate) fn fixture(name: &str, values: &[(&str, &str)]) -> Value {
    let path = repo_root().join("tests/fixtures/events").join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    for (k, v) in values {
        // Values are JSON string contents: escape them as such.
        let escaped = serde_json::to_string(v).expect("json");
        text = text.replace(&format!("@{k}@"), &escaped[1..escaped.len() - 1]);
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {name}: {e}\n{text}"))
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        stream.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((method, path, body))
}

async fn reply(
    stream: &mut BufReader<TcpStream>,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let s = stream.get_mut();
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}

async fn serve(
    stream: TcpStream,
    next: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>>,
    pending: Pending,
) {
    let mut stream = BufReader::new(stream);
    let Some((method, path, body)) = read_request(&mut stream).await else {
        return;
    };
    const BASE: &str = "/2018-06-01/runtime";
    if method == "GET" && path == format!("{BASE}/invocation/next") {
        let Some((id, event)) = next.lock().await.recv().await else {
            return;
        };
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() + 300_000)
            .unwrap_or(0);
        let headers = vec![
            ("lambda-runtime-aws-request-id".to_owned(), id),
            (
                "lambda-runtime-deadline-ms".to_owned(),
                deadline.to_string(),
            ),
            (
                "lambda-runtime-invoked-function-arn".to_owned(),
                "arn:aws:lambda:us-east-1:123456789012:function:kiln-trigger".to_owned(),
            ),
            (
                "lambda-runtime-trace-id".to_owned(),
                "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1"
                    .to_owned(),
            ),
        ];
        reply(
            &mut stream,
            "200 OK",
            &headers,
            event.to_string().as_bytes(),
        )
        .await;
        return;
    }
    let rest = path
        .strip_prefix(&format!("{BASE}/invocation/"))
        .unwrap_or("");
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let outcome = if let Some(id) = rest.strip_suffix("/response") {
        Some((id.to_owned(), Ok(parsed)))
    } else {
        rest.strip_suffix("/error")
            .map(|id| (id.to_owned(), Err(parsed)))
    };
    if let Some((id, result)) = outcome
        && let Some(tx) = pending.lock().ok().and_then(|mut p| p.remove(&id))
    {
        let _ = tx.send(result);
    }
    reply(&mut stream, "202 Accepted", &[], b"{\"status\":\"OK\"}").await;
}

impl Lambda {
    /// Starts the Runtime API and `kiln-trigger` against it, with `env` on top of the
    /// emulator's settings.
    pub(crate) async fn start(env: &[(&str, &str)]) -> Lambda {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, rx) = mpsc::unbounded_channel();
        let next = Arc::new(tokio::sync::Mutex::new(rx));
        let pending: Pending = Arc::default();
        let p2 = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&next), Arc::clone(&p2)));
            }
        });
        let log = std::env::temp_dir().join(format!("{}.log", unique("trigger")));
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln-trigger"));
        for (k, v) in &Emulator::get().vars {
            c.env(k, v);
        }
        c.env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "kiln-trigger")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/kiln-trigger")
            .env("RUST_LOG", "kiln=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("start kiln-trigger");
        Lambda {
            events,
            pending,
            child: Some(child),
            log,
        }
    }

    /// Invokes the function with `event`: `Ok(response)` or `Err(error document)`.
    pub(crate) async fn invoke(&self, event: Value) -> Result<Value, Value> {
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id.clone(), tx);
        self.events
            .send((id, event))
            .expect("the Runtime API is running");
        match tokio::time::timeout(Duration::from_secs(120), rx).await {
            Ok(Ok(r)) => r,
            _ => panic!("kiln-trigger did not answer an invocation:\n{}", self.log()),
        }
    }

    /// The function's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Lambda {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
