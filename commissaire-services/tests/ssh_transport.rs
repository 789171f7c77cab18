//! The SSH transport against real OpenSSH servers: the test hosts of
//! `scripts/testbed up --hosts N` (127.0.0.11-13 here). Each host has its own /etc, /usr, /var
//! and /run but shares /tmp with this machine, so a file a remote command creates under /tmp is
//! visible here.
//!
//! Host roles, so that tests running in parallel do not disturb each other:
//! host 0 is re-keyed, host 1 is stopped and started, host 2 is left alone.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use commissaire_services::transport::{Command, HostTarget, SshConfig, SshTransport, TransportError};

struct Testbed {
    hosts: Vec<String>,
    key: String,
    script: String,
}

fn testbed() -> Testbed {
    const HINT: &str = "the SSH transport tests need the sshd test hosts: run `scripts/testbed up --hosts 3` \
                        and `eval \"$(scripts/testbed env)\"` (scripts/test does both)";
    let hosts: Vec<String> = std::env::var("COMMISSAIRE_TEST_HOSTS")
        .unwrap_or_else(|_| panic!("COMMISSAIRE_TEST_HOSTS is not set: {HINT}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(hosts.len() >= 3, "COMMISSAIRE_TEST_HOSTS has {} hosts, 3 are needed: {HINT}", hosts.len());
    let key_path =
        std::env::var("COMMISSAIRE_TEST_KEY").unwrap_or_else(|_| panic!("COMMISSAIRE_TEST_KEY is not set: {HINT}"));
    let key = std::fs::read_to_string(&key_path).unwrap_or_else(|e| panic!("reading {key_path}: {e}: {HINT}"));
    let script =
        std::env::var("COMMISSAIRE_TESTBED").unwrap_or_else(|_| panic!("COMMISSAIRE_TESTBED is not set: {HINT}"));
    Testbed { hosts, key, script }
}

impl Testbed {
    fn target(&self, host: usize, user: &str) -> HostTarget {
        HostTarget::new(self.hosts[host].clone(), user, self.key.clone())
    }

    fn testbed(&self, action: &str, host: usize) {
        let out = std::process::Command::new("bash")
            .arg(&self.script)
            .arg(action)
            .arg(&self.hosts[host])
            .output()
            .expect("run scripts/testbed");
        assert!(out.status.success(), "testbed {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn fast_config() -> SshConfig {
    SshConfig {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(30),
        ..SshConfig::default()
    }
}

#[tokio::test]
async fn runs_a_command_and_reads_stdout_stderr_and_exit_status() {
    let tb = testbed();
    let ssh = SshTransport::new(fast_config());
    let out = ssh.run(&tb.target(2, "root"), &Command::script("echo out; echo err >&2; exit 3")).await.expect("run");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.exit_status, Some(3));
    assert!(!out.success());
    assert!(out.host_key.starts_with("ssh-ed25519 "), "{}", out.host_key);

    let out = ssh.run(&tb.target(2, "root"), &Command::new("id").arg("-un")).await.expect("run");
    assert_eq!((out.stdout.as_str(), out.exit_status), ("root\n", Some(0)));
}

#[tokio::test]
async fn first_contact_returns_the_host_key_and_pinning_it_works() {
    let tb = testbed();
    let first =
        SshTransport::new(fast_config()).run(&tb.target(2, "root"), &Command::new("true")).await.expect("first");
    // a fresh transport, so that the pinned key is checked on a new connection
    let pinned = tb.target(2, "root").pinned(first.host_key.clone());
    let again = SshTransport::new(fast_config()).run(&pinned, &Command::new("true")).await.expect("pinned");
    assert_eq!(again.host_key, first.host_key);
    // the key file the testbed generated is what we saw
    let dir = std::env::var("COMMISSAIRE_TESTBED_DIR").unwrap_or_else(|_| "/tmp/commissaire-testbed".into());
    let on_disk =
        std::fs::read_to_string(format!("{dir}/ssh/h{}/ssh_host_ed25519_key.pub", tb.hosts[2])).expect("host key");
    assert!(on_disk.starts_with(first.host_key.trim()), "{on_disk} vs {}", first.host_key);
}

#[tokio::test]
async fn a_changed_host_key_fails_with_host_key_changed() {
    let tb = testbed();
    let ssh = SshTransport::new(fast_config());
    let old = ssh.run(&tb.target(0, "root"), &Command::new("true")).await.expect("first contact").host_key;
    let pinned_old = tb.target(0, "root").pinned(old.clone());
    ssh.run(&pinned_old, &Command::new("true")).await.expect("pinned, before the re-key");

    tb.testbed("host-rekey", 0);
    // same transport: its cached connection was cut by the restart and must not hide the change
    let err = ssh.run(&pinned_old, &Command::new("true")).await.expect_err("old pinned key must fail");
    let TransportError::HostKeyChanged { address, expected_fingerprint, found_fingerprint } = &err else {
        panic!("expected HostKeyChanged, got {err:?}");
    };
    assert_eq!(address, &tb.hosts[0]);
    assert!(expected_fingerprint.starts_with("SHA256:") && found_fingerprint.starts_with("SHA256:"));
    assert_ne!(expected_fingerprint, found_fingerprint);
    let msg = err.to_string();
    assert!(msg.contains("has changed") && msg.contains("re-trust it through the API"), "{msg}");
    // a fresh transport sees the same
    let err = SshTransport::new(fast_config()).run(&pinned_old, &Command::new("true")).await.expect_err("fresh");
    assert!(matches!(err, TransportError::HostKeyChanged { .. }), "{err:?}");

    // restore: re-trust the new key (first contact again), pin it, and it works
    let new =
        SshTransport::new(fast_config()).run(&tb.target(0, "root"), &Command::new("true")).await.expect("re-trust");
    assert_ne!(new.host_key, old);
    ssh.run(&tb.target(0, "root").pinned(new.host_key), &Command::new("true")).await.expect("new key pinned");
}

#[tokio::test]
async fn a_wrong_private_key_fails_with_authentication_failed() {
    let tb = testbed();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let other = std::fs::read_to_string(&path).expect("key");
    for user in ["root", "commissaire"] {
        let target = HostTarget::new(tb.hosts[2].clone(), user, other.clone());
        let err = SshTransport::new(fast_config()).run(&target, &Command::new("true")).await.expect_err("must fail");
        match &err {
            TransportError::AuthenticationFailed { address, user: u } => {
                assert_eq!((address.as_str(), u.as_str()), (tb.hosts[2].as_str(), user));
            }
            other => panic!("expected AuthenticationFailed, got {other:?}"),
        }
        assert!(!err.to_string().contains("PRIVATE KEY"));
    }
}

#[tokio::test]
async fn a_stopped_host_is_unreachable_and_comes_back() {
    let tb = testbed();
    let config = SshConfig { connect_timeout: Duration::from_secs(3), ..fast_config() };
    let ssh = SshTransport::new(config.clone());
    let before = ssh.run(&tb.target(1, "root"), &Command::new("true")).await.expect("before");

    tb.testbed("host-stop", 1);
    let started = Instant::now();
    // same transport (its cached connection was cut) and a fresh one
    for t in [ssh.clone(), SshTransport::new(config.clone())] {
        let err = t.run(&tb.target(1, "root"), &Command::new("true")).await.expect_err("host is down");
        match &err {
            TransportError::Unreachable { address, reason } => {
                assert_eq!(address, &tb.hosts[1]);
                assert!(reason.contains("connection refused"), "{reason}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    assert!(started.elapsed() < config.connect_timeout, "refused must not wait for the connect timeout");

    tb.testbed("host-start", 1);
    // same host key as before the stop
    let after =
        ssh.run(&tb.target(1, "root").pinned(before.host_key.clone()), &Command::new("true")).await.expect("after");
    assert_eq!(after.host_key, before.host_key);
}

#[tokio::test]
async fn a_non_root_user_runs_commands_through_sudo() {
    let tb = testbed();
    let ssh = SshTransport::new(fast_config());
    let out = ssh.run(&tb.target(2, "commissaire"), &Command::new("id").arg("-u")).await.expect("run");
    assert_eq!((out.stdout.as_str(), out.exit_status), ("0\n", Some(0)), "stderr: {}", out.stderr);
    // the login itself is the unprivileged user: sudo is what makes it root
    let out = ssh.run(&tb.target(2, "commissaire"), &Command::script("echo \"$SUDO_USER\"")).await.expect("run");
    assert_eq!(out.stdout, "commissaire\n");
}

#[tokio::test]
async fn hostile_values_run_nothing_extra() {
    let tb = testbed();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("injected");
    let m = marker.display().to_string();
    let hostile = [
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("; touch {m}"),
        format!("x && touch {m}"),
        format!("x | touch {m}"),
        format!("'; touch {m}; '"),
        format!("'$(touch {m})'"),
        format!("\"; touch {m}; \""),
        format!("x\ntouch {m}"),
        format!("x\r\ntouch {m}"),
        format!("${{IFS}}touch${{IFS}}{m}"),
        format!("\\'; touch {m} #"),
        format!("--version; touch {m}"),
    ];
    let ssh = SshTransport::new(fast_config());
    for user in ["root", "commissaire"] {
        for value in &hostile {
            let out = ssh.run(&tb.target(2, user), &Command::new("printf").arg("%s").arg(value)).await.expect("run");
            assert_eq!(&out.stdout, value, "user {user}: value came back changed");
            assert!(!marker.exists(), "user {user}: injection ran for {value:?}");
            // as a program name: no such program, and nothing else runs
            let out = ssh.run(&tb.target(2, user), &Command::new(value.clone())).await.expect("run");
            assert_ne!(out.exit_status, Some(0));
            assert!(!marker.exists(), "user {user}: injection ran for program {value:?}");
            // into a fixed script as a positional parameter
            let out = ssh
                .run(&tb.target(2, user), &Command::script("printf '%s' \"$1\"").arg(value.clone()))
                .await
                .expect("run");
            assert_eq!(&out.stdout, value);
            assert!(!marker.exists(), "user {user}: injection ran via script argument {value:?}");
        }
    }
    // hostile user and address never reach a shell either
    for (address, user) in
        [(tb.hosts[2].clone(), format!("$(touch {m})")), (format!("{}; touch {m}", tb.hosts[2]), "root".into())]
    {
        let target = HostTarget::new(address, user, tb.key.clone());
        let err = ssh.run(&target, &Command::new("true")).await.expect_err("must fail");
        assert!(
            matches!(err, TransportError::AuthenticationFailed { .. } | TransportError::Unreachable { .. }),
            "{err:?}"
        );
        assert!(!marker.exists());
    }
}

#[tokio::test]
async fn sequential_commands_reuse_one_connection_until_idle() {
    let tb = testbed();
    let ssh = SshTransport::new(SshConfig { idle_timeout: Duration::from_millis(500), ..fast_config() });
    for i in 0..20 {
        let out = ssh.run(&tb.target(2, "root"), &Command::new("echo").arg(i.to_string())).await.expect("run");
        assert_eq!(out.stdout, format!("{i}\n"));
    }
    assert_eq!(ssh.connections_opened(), 1);
    assert_eq!(ssh.cached_connections(), 1);
    // another user is another connection
    ssh.run(&tb.target(2, "commissaire"), &Command::new("true")).await.expect("run");
    assert_eq!(ssh.connections_opened(), 2);

    // unused for idle_timeout: closed and forgotten; the next command opens a new one
    let deadline = Instant::now() + Duration::from_secs(10);
    while ssh.cached_connections() > 0 {
        assert!(Instant::now() < deadline, "idle connections were not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ssh.run(&tb.target(2, "root"), &Command::new("true")).await.expect("run");
    assert_eq!(ssh.connections_opened(), 3);
}

#[tokio::test]
async fn concurrent_sessions_are_bounded() {
    let tb = testbed();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sessions.log");
    let ssh = SshTransport::new(SshConfig { max_sessions: 2, ..fast_config() });
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (ssh, target, log) = (ssh.clone(), tb.target(2, "root"), log.display().to_string());
        tasks.push(tokio::spawn(async move {
            let cmd = Command::script(
                "echo \"$(date +%s%N) start\" >> \"$1\"; sleep 0.3; echo \"$(date +%s%N) end\" >> \"$1\"",
            )
            .arg(log);
            ssh.run(&target, &cmd).await
        }));
    }
    for t in tasks {
        let out = t.await.expect("join").expect("run");
        assert!(out.success(), "{}", out.stderr);
    }
    let (running, max) = max_overlap(&log);
    assert_eq!(running, 0);
    assert!(max <= 2, "{max} commands ran at the same time on the host, the bound is 2");
    assert_eq!(max, 2, "the two sessions should run in parallel");
    assert!(ssh.peak_sessions() <= 2);
    assert_eq!(ssh.connections_opened(), 1, "concurrent commands to one host share one connection");
}

/// (still running at the end, most running at once) from the start/end lines of the host.
fn max_overlap(log: &Path) -> (i64, i64) {
    let text = std::fs::read_to_string(log).expect("session log");
    let mut events: Vec<(u128, i64)> = text
        .lines()
        .map(|l| {
            let (t, what) = l.split_once(' ').expect("line");
            (t.parse().expect("time"), if what == "start" { 1 } else { -1 })
        })
        .collect();
    assert_eq!(events.len(), 20, "{text}");
    events.sort(); // at equal times an end (-1) sorts before a start
    let (mut running, mut max) = (0, 0);
    for (_, d) in events {
        running += d;
        max = max.max(running);
    }
    (running, max)
}

#[tokio::test]
async fn a_command_that_runs_too_long_times_out_and_the_connection_stays_usable() {
    let tb = testbed();
    // Generous enough that `echo` fits even on a loaded machine, far below the sleep.
    let ssh = SshTransport::new(SshConfig { command_timeout: Duration::from_secs(3), ..fast_config() });
    let err = ssh.run(&tb.target(2, "root"), &Command::new("sleep").arg("20")).await.expect_err("timeout");
    assert!(matches!(err, TransportError::CommandTimedOut { .. }), "{err:?}");
    let out = ssh.run(&tb.target(2, "root"), &Command::new("echo").arg("ok")).await.expect("after timeout");
    assert_eq!(out.stdout, "ok\n");
    assert_eq!(ssh.connections_opened(), 1);
}
