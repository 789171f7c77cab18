//! `status --watch` on the event stream, against a stand-in of the server's
//! `GET /api/v0/events` that breaks its stream on purpose (the real endpoint
//! is exercised by the features suite): the stream is read as events arrive, a
//! broken stream is opened again and the record re-read, the watch ends with
//! the operation, and a failed operation exits 1.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What the stand-in serves; `script` is what each successive event stream
/// sends: `(record after the event)`, then it closes.
struct Fake {
    record: Mutex<Value>,
    scripts: Mutex<Vec<Vec<Value>>>,
    streams_opened: Mutex<u32>,
}

fn record(status: &str, done: &[&str], in_process: &[&str], failed: &[&str]) -> Value {
    json!({"name": "prod", "status": status, "restarted": done, "in_process": in_process,
           "failed_hosts": failed, "started_at": "2026-11-22T10:00:00.000000",
           "finished_at": if status == "in_process" { Value::Null } else { json!("2026-11-22T10:00:09.000000") },
           "phase": if status == "in_process" { "running" } else { status },
           "reason": if failed.is_empty() { "" } else { "b: host unreachable" }})
}

fn event_text(id: usize, document: &Value) -> String {
    let data = json!({"model": "ClusterRestart", "event": "updated", "cluster": "prod", "document": document});
    format!("id: {id}\nevent: ClusterRestart.updated\ndata: {data}\n\n")
}

async fn serve(
    fake: Arc<Fake>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let json_reply = |v: &Value| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())).boxed())
            .expect("response")
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    Ok(match path.as_str() {
        "/api/v0/cluster/prod/restart" => json_reply(&fake.record.lock().expect("lock")),
        "/api/v0/cluster/prod" => json_reply(&json!({"name": "prod", "hostset": ["a", "b", "c"]})),
        "/api/v0/hosts" => {
            json_reply(&json!([{"address": "a", "status": "active"}, {"address": "b", "status": "active"}]))
        }
        "/api/v0/events" => {
            assert!(query.contains("cluster=prod") && query.contains("ClusterRestart"), "{query}");
            *fake.streams_opened.lock().expect("lock") += 1;
            let script = {
                let mut scripts = fake.scripts.lock().expect("lock");
                if scripts.is_empty() { Vec::new() } else { scripts.remove(0) }
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
            let fake = fake.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(": keepalive\n\n")))).await;
                for (i, next) in script.into_iter().enumerate() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    *fake.record.lock().expect("lock") = next.clone();
                    let text = event_text(i + 1, &next);
                    // Cut each event in two to exercise reassembly.
                    let (one, two) = text.split_at(text.len() / 2);
                    let _ = tx.send(Ok(Frame::data(Bytes::from(one.to_string())))).await;
                    let _ = tx.send(Ok(Frame::data(Bytes::from(two.to_string())))).await;
                }
                // The stream ends here (a server restart, a proxy timeout…).
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .expect("response")
        }
        _ => Response::builder().status(404).body(Full::new(Bytes::from("{}")).boxed()).expect("response"),
    })
}

async fn start(fake: Arc<Fake>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { break };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| serve(fake.clone(), req));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    port
}

async fn watch(port: u16) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.json");
    std::fs::write(
        &config,
        json!({"endpoint": format!("http://127.0.0.1:{port}"), "username": "u", "password": "p"}).to_string(),
    )
    .expect("config");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_commctl"))
        .arg("--config")
        .arg(&config)
        .args(["cluster", "restart", "status", "prod", "--watch"])
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(Duration::from_secs(60), child).await.expect("the watch ended").expect("commctl")
}

#[tokio::test]
async fn follows_events_across_a_broken_stream_until_the_end() {
    let fake = Arc::new(Fake {
        record: Mutex::new(record("in_process", &[], &["a"], &[])),
        scripts: Mutex::new(vec![
            vec![record("in_process", &["a"], &["b"], &[])],
            vec![record("in_process", &["a", "b"], &["c"], &[]), record("finished", &["a", "b", "c"], &[], &[])],
        ]),
        streams_opened: Mutex::new(0),
    });
    let port = start(fake.clone()).await;
    let output = watch(port).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let blocks: Vec<&str> = stdout.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    let counts: Vec<&str> = blocks.iter().filter_map(|b| b.lines().nth(1)).collect();
    assert_eq!(
        counts,
        [
            "[------------------------------] 0/3  done 0, in process 1, failed 0, pending 2",
            "[##########--------------------] 1/3  done 1, in process 1, failed 0, pending 1",
            "[####################----------] 2/3  done 2, in process 1, failed 0, pending 0",
            "[##############################] 3/3  done 3, in process 0, failed 0, pending 0",
        ],
        "{stdout}"
    );
    assert!(
        blocks.last().is_some_and(|b| b.starts_with("restart of cluster prod: finished, elapsed 0:09")),
        "{stdout}"
    );
    assert!(stdout.contains("a     done   active"), "{stdout}");
    assert_eq!(*fake.streams_opened.lock().expect("lock"), 2, "the broken stream was opened again");
    assert!(!stderr.contains("polling"), "{stderr}");
}

#[tokio::test]
async fn a_failed_operation_exits_1_with_its_reason() {
    let fake = Arc::new(Fake {
        record: Mutex::new(record("in_process", &[], &["a"], &[])),
        scripts: Mutex::new(vec![vec![record("failed", &["a"], &[], &["b"])]]),
        streams_opened: Mutex::new(0),
    });
    let port = start(fake).await;
    let output = watch(port).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("done 1, in process 0, failed 1, pending 1"), "{stdout}");
    assert!(stderr.contains("ended failed (b: host unreachable)"), "{stderr}");
}
