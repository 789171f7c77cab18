//! The `commissaire-storage-service` binary as an operator runs it: on RabbitMQ
//! and etcd from the test bed, with a configuration file, answering requests
//! from another process; and refusing to start without its secrets key.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use commissaire_core::bus::{self, Bus};
use serde_json::json;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `eval \"$(scripts/testbed env)\"` after `scripts/testbed up`")
    })
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn refuses_to_start_without_a_key_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("secrets.key");
    let output = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
        .args(["--bus-uri", "memory://", "--secrets-key-file"])
        .arg(&missing)
        .args(["--config-file", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    // An empty standard input is not a JSON object: the configuration error comes first.
    assert!(!output.status.success());

    let config = dir.path().join("storage.conf");
    std::fs::write(&config, r#"{"storage_handlers": [{"type": "embedded", "path": "/nonexistent-dir/x.redb"}]}"#)
        .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
        .args(["--bus-uri", "memory://", "--config-file"])
        .arg(&config)
        .arg("--secrets-key-file")
        .arg(&missing)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--generate-secrets-key"), "no hint in: {stderr}");
    assert!(!missing.exists(), "a production service must not invent a key");

    let output = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
        .arg("--generate-secrets-key")
        .arg(&missing)
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(missing.exists());
}

#[tokio::test]
async fn serves_storage_on_amqp_and_etcd_from_its_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("secrets.key");
    let exchange = format!("t-{}", uuid::Uuid::new_v4());
    let namespace = format!("/t-{}", uuid::Uuid::new_v4());
    let config = dir.path().join("storage.conf");
    std::fs::write(
        &config,
        json!({
            "bus_uri": env("COMMISSAIRE_AMQP_URL"),
            "bus-exchange": exchange,
            "secrets_key_file": key,
            "storage_handlers": [{"type": "etcd", "server_url": env("COMMISSAIRE_ETCD_URL"), "namespace": namespace}],
        })
        .to_string(),
    )
    .expect("write config");
    let status = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
        .arg("--generate-secrets-key")
        .arg(&key)
        .status()
        .expect("run");
    assert!(status.success());
    let _service = Service(
        Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start storage service"),
    );

    let client: Arc<dyn Bus> = bus::connect(&env("COMMISSAIRE_AMQP_URL"), &exchange).await.expect("connect");
    // The service needs a moment to bind its queue; retry until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let saved = loop {
        match client
            .request(
                "storage.save",
                json!({"model_type_name": "Network", "model_json_data": {"name": "default"}}),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(saved) => break saved,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("storage service never answered: {err}"),
        }
    };
    assert_eq!(saved, json!({"name": "default", "type": "flannel_etcd", "options": {}}));
    let list = client
        .request("storage.list", json!({"model_type_name": "Networks"}), Duration::from_secs(5))
        .await
        .expect("list");
    assert_eq!(list, json!([{"name": "default", "type": "flannel_etcd", "options": {}}]));

    // The record is where operators expect it in etcd (under the namespace).
    let mut etcd = etcd_client::Client::connect([env("COMMISSAIRE_ETCD_URL")], None).await.expect("etcd");
    let got = etcd.get(format!("{namespace}/commissaire/networks/default"), None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
    etcd.delete(namespace.clone(), Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("cleanup");
}
