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

/// A storage.conf in `dir` for the test bed's RabbitMQ (an exchange of its own)
/// and etcd (a namespace of its own): (path, exchange, namespace).
fn amqp_etcd_config(dir: &tempfile::TempDir, key: Option<&std::path::Path>) -> (std::path::PathBuf, String, String) {
    let exchange = format!("t-{}", uuid::Uuid::new_v4());
    let namespace = format!("/t-{}", uuid::Uuid::new_v4());
    let config = dir.path().join("storage.conf");
    let mut members = json!({
        "bus_uri": env("COMMISSAIRE_AMQP_URL"),
        "bus-exchange": exchange,
        "storage_handlers": [{"type": "etcd", "server_url": env("COMMISSAIRE_ETCD_URL"), "namespace": namespace}],
    });
    if let Some(key) = key {
        members["secrets_key_file"] = json!(key);
    }
    std::fs::write(&config, members.to_string()).expect("write config");
    (config, exchange, namespace)
}

#[tokio::test]
async fn serves_storage_on_amqp_and_etcd_from_its_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("secrets.key");
    let (config, exchange, namespace) = amqp_etcd_config(&dir, Some(&key));
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

/// Saves host credentials through a storage service started with `key` (and
/// `previous` keys), or reads them back; the service is stopped afterwards.
async fn with_service<T>(
    config: &std::path::Path,
    exchange: &str,
    key: &std::path::Path,
    previous: &[&std::path::Path],
    work: impl AsyncFnOnce(&Arc<dyn Bus>) -> T,
) -> T {
    let mut command = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"));
    command.arg("-c").arg(config).arg("--secrets-key-file").arg(key).stdout(Stdio::null());
    for older in previous {
        command.arg("--previous-secrets-key-file").arg(older);
    }
    let _service = Service(command.spawn().expect("start storage service"));
    let client: Arc<dyn Bus> = bus::connect(&env("COMMISSAIRE_AMQP_URL"), exchange).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = client.request("storage.list_store_handlers", json!({}), Duration::from_secs(2)).await {
        assert!(Instant::now() < deadline, "storage service never answered: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    work(&client).await
}

fn creds(address: &str) -> serde_json::Value {
    json!({"address": address, "ssh_priv_key": "c2VjcmV0", "remote_user": "root"})
}

async fn get_creds(client: &Arc<dyn Bus>, address: &str) -> Result<serde_json::Value, bus::BusError> {
    client
        .request(
            "storage.get",
            json!({"model_type_name": "HostCreds", "model_json_data": {"address": address}}),
            Duration::from_secs(5),
        )
        .await
}

fn reseal(config: &std::path::Path, key: &std::path::Path, previous: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
        .arg("-c")
        .arg(config)
        .arg("--secrets-key-file")
        .arg(key)
        .arg("--previous-secrets-key-file")
        .arg(previous)
        .arg("--reseal-secrets")
        .output()
        .expect("run --reseal-secrets");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn rotates_the_secrets_key_without_losing_a_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    for key in [&old, &new] {
        let status = Command::new(env!("CARGO_BIN_EXE_commissaire-storage-service"))
            .arg("--generate-secrets-key")
            .arg(key)
            .stdout(Stdio::null())
            .status()
            .expect("run");
        assert!(status.success());
    }
    let (config, exchange, namespace) = amqp_etcd_config(&dir, None);
    let addresses = ["10.9.0.1", "10.9.0.2", "10.9.0.3"];

    with_service(&config, &exchange, &old, &[], async |client| {
        for address in addresses {
            let params = json!({"model_type_name": "HostCreds", "model_json_data": creds(address)});
            client.request("storage.save", params, Duration::from_secs(5)).await.expect("save creds");
        }
    })
    .await;

    // The new key alone cannot open them, and says how to fix that.
    let refused = with_service(&config, &exchange, &new, &[], async |client| get_creds(client, addresses[0]).await)
        .await
        .expect_err("opened with the wrong key");
    assert!(refused.to_string().contains("previous_secrets_key_files"), "{refused}");

    // During the rotation both keys are loaded: reads work, new writes use the new key.
    with_service(&config, &exchange, &new, &[&old], async |client| {
        assert_eq!(get_creds(client, addresses[0]).await.expect("open with the previous key"), creds(addresses[0]));
        let params = json!({"model_type_name": "HostCreds", "model_json_data": creds("10.9.0.4")});
        client.request("storage.save", params, Duration::from_secs(5)).await.expect("save creds");
    })
    .await;

    // The one-off reseal rewrites what the old key sealed (the service above
    // started resealing too; whatever it did, the counts add up to 4).
    let (ok, report) = reseal(&config, &new, &old);
    assert!(ok, "{report}");
    // "resealed N host credentials with key ID; M already used it; F failed"
    let words: Vec<&str> = report.split_whitespace().map(|w| w.trim_end_matches(';')).collect();
    let numbers: Vec<usize> = words
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || words[i - 1] != "key") // the key id may be all digits
        .filter_map(|(_, w)| w.parse().ok())
        .collect();
    assert!(report.starts_with("resealed "), "{report}");
    assert_eq!(numbers.len(), 3, "{report}");
    assert_eq!(numbers[0] + numbers[1], 4, "{report}");
    assert_eq!(numbers[2], 0, "{report}");
    let (ok, again) = reseal(&config, &new, &old);
    assert!(ok && again.contains("resealed 0 ") && again.contains("; 4 already used it; 0 failed"), "{again}");

    // The old key is no longer needed.
    with_service(&config, &exchange, &new, &[], async |client| {
        for address in addresses.iter().chain(&["10.9.0.4"]) {
            assert_eq!(get_creds(client, address).await.expect("open with the new key"), creds(address));
        }
    })
    .await;

    let mut etcd = etcd_client::Client::connect([env("COMMISSAIRE_ETCD_URL")], None).await.expect("etcd");
    etcd.delete(namespace.clone(), Some(etcd_client::DeleteOptions::new().with_prefix())).await.expect("cleanup");
}
