//! The SSH transport's metrics: a session that runs shows in
//! `commissaire_ssh_sessions_open` only while it runs, and each failure counts
//! under its reason. Uses the test bed's first test host and client key
//! (`COMMISSAIRE_TEST_HOSTS`, `COMMISSAIRE_TEST_KEY`), so it follows the bed's
//! addresses.

use commissaire_core::metrics;
use commissaire_services::transport::{Command, HostTarget, SshConfig, SshTransport};
use zeroize::Zeroizing;

fn sample(series: &str) -> f64 {
    metrics::encode()
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn target(address: &str, port: u16, key: String) -> HostTarget {
    HostTarget {
        address: address.into(),
        port,
        user: "root".into(),
        private_key: Zeroizing::new(key),
        pinned_host_key: None,
    }
}

#[tokio::test]
async fn sessions_and_failures_are_counted() {
    let hosts = std::env::var("COMMISSAIRE_TEST_HOSTS").expect("COMMISSAIRE_TEST_HOSTS: run `scripts/testbed env`");
    let host = hosts.split_whitespace().next().expect("a test host").to_string();
    let key_path = std::env::var("COMMISSAIRE_TEST_KEY").expect("COMMISSAIRE_TEST_KEY");
    let key = std::fs::read_to_string(key_path).expect("client key");
    let ssh = SshTransport::new(SshConfig::default());

    let open = "commissaire_ssh_sessions_open";
    let before_open = sample(open);
    // A command that sleeps: the gauge shows it while it runs.
    let running = {
        let ssh = ssh.clone();
        let target = target(&host, 22, key.clone());
        tokio::spawn(async move { ssh.run(&target, &Command::new("sleep").arg("2")).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sample(open) < before_open + 1.0 {
        assert!(std::time::Instant::now() < deadline, "the running session never showed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    running.await.expect("join").expect("sleep ran");
    assert_eq!(sample(open), before_open, "the gauge drops when the session ends");

    let bad_key = r#"commissaire_ssh_sessions_failed_total{reason="bad_key"}"#;
    let before = sample(bad_key);
    let err = ssh.run(&target(&host, 22, "not a key".into()), &Command::new("true")).await;
    assert!(err.is_err());
    assert_eq!(sample(bad_key) - before, 1.0);

    // Port 1 of the test host: nothing listens, the connection is refused.
    let unreachable = r#"commissaire_ssh_sessions_failed_total{reason="unreachable"}"#;
    let before = sample(unreachable);
    let err = ssh.run(&target(&host, 1, key), &Command::new("true")).await;
    assert!(err.is_err());
    assert_eq!(sample(unreachable) - before, 1.0, "{}", metrics::encode());
    assert!(!metrics::encode().contains(&host), "no address in the metrics");
}
