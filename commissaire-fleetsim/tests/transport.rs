//! The simulator driven by the product's own SSH transport: log in with the
//! pinned host key, run the commands the product sends, reboot a host and see
//! the refusal, then the host back with a new boot id.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use commissaire_fleetsim::{Fleet, FleetConfig, HostKeys, derived_key};
use commissaire_services::{
    investigator::parse_facts,
    transport::{Command, HostTarget, SshConfig, SshTransport, TransportError},
};
use russh::keys::ssh_key::LineEnding;

const DEADLINE: Duration = Duration::from_secs(30);

/// A fleet of `hosts` on 127.20.200.x (this test's own range) and the client key text.
async fn fleet(hosts: usize, failing: f64) -> (Fleet, String) {
    let client = derived_key(4242, 0);
    let key_text = client.to_openssh(LineEnding::LF).expect("encode the client key").to_string();
    let config = FleetConfig {
        first_address: Ipv4Addr::new(127, 20, 200, 1),
        host_keys: HostKeys::Derived { seed: 7 },
        reboot_time: Duration::from_millis(1500),
        failing_fraction: failing,
        ..FleetConfig::new(hosts, client.public_key().clone())
    };
    (Fleet::start(config).await.expect("the fleet starts (port 22 needs root)"), key_text)
}

fn target(fleet: &Fleet, index: usize, key: &str) -> HostTarget {
    let host = fleet.host(index).expect("host");
    HostTarget::new(host.address.ip().to_string(), "root", key).pinned(host.host_key_line())
}

fn transport() -> SshTransport {
    SshTransport::new(SshConfig { connect_timeout: Duration::from_secs(5), ..SshConfig::default() })
}

#[tokio::test]
async fn commands_reboot_and_host_keys() {
    let (fleet, key) = fleet(3, 0.0).await;
    let ssh = transport();

    // The watcher's check and the investigator's facts, host key pinned.
    let t0 = target(&fleet, 0, &key);
    let out = ssh.run(&t0, &Command::script("true")).await.expect("true");
    assert!(out.success());
    assert_eq!(out.host_key.trim(), fleet.host(0).expect("host").host_key_line().trim());
    let facts = ssh
        .run(&t0, &Command::script(". /etc/os-release; echo \"os=$ID\"; echo \"cpus=$(nproc)\""))
        .await
        .expect("facts");
    let facts = parse_facts(&facts.stdout).expect("facts parse");
    assert_eq!(facts.os, "fedora");

    // Each host has its own key: host 1's key pinned for host 0 is refused before login.
    let wrong =
        HostTarget::new(t0.address.clone(), "root", key.as_str()).pinned(fleet.host(1).expect("host").host_key_line());
    let err = ssh.run(&wrong, &Command::new("true")).await.expect_err("changed host key");
    assert!(matches!(err, TransportError::HostKeyChanged { .. }), "{err:?}");

    // Another client key is not accepted.
    let stranger = derived_key(1, 1).to_openssh(LineEnding::LF).expect("encode").to_string();
    let err = transport()
        .run(&HostTarget::new(t0.address.clone(), "root", stranger.as_str()), &Command::new("true"))
        .await
        .expect_err("unknown client key");
    assert!(matches!(err, TransportError::AuthenticationFailed { .. }), "{err:?}");

    // Through sudo, as a user other than root.
    let as_user = HostTarget::new(t0.address.clone(), "cloud-user", key.as_str());
    let boot = ssh.run(&as_user, &Command::script("cat /proc/sys/kernel/random/boot_id")).await.expect("boot id");
    let before = boot.stdout.trim().to_owned();
    assert_eq!(before, fleet.host(0).expect("host").boot_id());

    // The reboot the playbook engine asks for: the session may end, then the
    // host refuses connections, then answers with a new boot id.
    let shutdown =
        "for d in /sbin /usr/sbin; do if [ -x \"$d/shutdown\" ]; then exec \"$d/shutdown\" -r 0 \"$1\"; fi; done";
    let _ = ssh.run(&t0, &Command::script(shutdown).arg("Reboot initiated by Commissaire")).await;
    let deadline = Instant::now() + DEADLINE;
    let mut refused = false;
    let after = loop {
        assert!(Instant::now() < deadline, "host 0 did not come back (refused seen: {refused})");
        match ssh.run(&t0, &Command::script("cat /proc/sys/kernel/random/boot_id")).await {
            Err(TransportError::Unreachable { reason, .. }) => {
                refused |= reason.contains("refused");
            }
            Err(other) => panic!("unexpected error while host 0 reboots: {other}"),
            Ok(out) if out.stdout.trim() != before => break out.stdout.trim().to_owned(),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused, "connections were never refused during the reboot");
    assert_ne!(after, before);
    assert_eq!(fleet.stats().reboots.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Host 2 was not touched by host 0's reboot.
    let t2 = target(&fleet, 2, &key);
    assert!(ssh.run(&t2, &Command::new("true")).await.expect("host 2").success());
    fleet.stop().await;
}

#[tokio::test]
async fn failing_hosts_fail_every_command() {
    let (fleet, key) = fleet_at(Ipv4Addr::new(127, 20, 201, 1), 4, 1.0).await;
    let out = transport().run(&target(&fleet, 3, &key), &Command::new("true")).await.expect("runs");
    assert_eq!((out.exit_status, out.stderr.trim()), (Some(1), "simulated failure"));
    fleet.stop().await;
}

async fn fleet_at(first: Ipv4Addr, hosts: usize, failing: f64) -> (Fleet, String) {
    let client = derived_key(4242, 0);
    let key_text = client.to_openssh(LineEnding::LF).expect("encode the client key").to_string();
    let config = FleetConfig {
        first_address: first,
        failing_fraction: failing,
        ..FleetConfig::new(hosts, client.public_key().clone())
    };
    (Fleet::start(config).await.expect("the fleet starts"), key_text)
}
