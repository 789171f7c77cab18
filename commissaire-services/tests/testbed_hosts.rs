//! The test hosts of `scripts/testbed up --hosts N --ostree-hosts M` are isolated machines that
//! the product can really manage, checked through the product's own SSH transport: what a host
//! writes stays in that host, a reboot from inside cuts every session and comes back with a new
//! boot id, apt upgrades a package from the testbed's repository on that host only, an OSTree
//! host boots a deployed version after a reboot, and host-down / host-up switch reachability.
//!
//! Host roles, so that tests running in parallel (and the other suites, which use the first
//! hosts) do not disturb each other: the last six non-OSTree hosts of COMMISSAIRE_TEST_HOSTS
//! (isolation writer, isolation reader, reboot, apt, untouched, down/up) and the first OSTree host
//! of COMMISSAIRE_TEST_OSTREE_HOSTS. Every test resets the hosts it changes first, so re-runs pass.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use commissaire_services::transport::{Command, HostTarget, SshConfig, SshTransport, TransportError};

const HINT: &str = "the test host tests need the testbed's hosts: run `scripts/testbed up --hosts 20 \
                    --ostree-hosts 2` and `eval \"$(scripts/testbed env)\"` (scripts/test does both)";

struct Testbed {
    /// non-OSTree hosts
    plain: Vec<String>,
    ostree: Vec<String>,
    key: String,
    script: String,
    dir: PathBuf,
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: {HINT}"))
}

fn testbed() -> Testbed {
    let ostree: Vec<String> = env("COMMISSAIRE_TEST_OSTREE_HOSTS").split_whitespace().map(str::to_owned).collect();
    let plain: Vec<String> = env("COMMISSAIRE_TEST_HOSTS")
        .split_whitespace()
        .filter(|h| !ostree.contains(&(*h).to_owned()))
        .map(str::to_owned)
        .collect();
    assert!(
        plain.len() >= 9,
        "{} non-OSTree test hosts, at least 9 are needed (3 for the other suites): {HINT}",
        plain.len()
    );
    let key_path = env("COMMISSAIRE_TEST_KEY");
    let key = std::fs::read_to_string(&key_path).unwrap_or_else(|e| panic!("reading {key_path}: {e}: {HINT}"));
    Testbed {
        plain,
        ostree,
        key,
        script: env("COMMISSAIRE_TESTBED"),
        dir: PathBuf::from(env("COMMISSAIRE_TESTBED_DIR")),
    }
}

/// Roles among the last six non-OSTree hosts.
enum Role {
    IsolationWriter = 6,
    IsolationReader = 5,
    Reboot = 4,
    Apt = 3,
    Untouched = 2,
    DownUp = 1,
}

impl Testbed {
    fn host(&self, role: Role) -> String {
        self.plain[self.plain.len() - role as usize].clone()
    }

    fn ostree_host(&self) -> String {
        self.ostree.first().cloned().unwrap_or_else(|| panic!("COMMISSAIRE_TEST_OSTREE_HOSTS is empty: {HINT}"))
    }

    fn target(&self, address: &str) -> HostTarget {
        HostTarget::new(address.to_owned(), "root", self.key.clone())
    }

    /// `scripts/testbed ACTION ADDRESS`, which must succeed.
    fn testbed(&self, action: &str, address: &str) {
        let out = std::process::Command::new("bash")
            .arg(&self.script)
            .arg(action)
            .arg(address)
            .output()
            .expect("run scripts/testbed");
        assert!(out.status.success(), "testbed {action} {address} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn host_dir(&self, address: &str) -> PathBuf {
        self.dir.join("ssh").join(format!("h{address}"))
    }

    /// What the host's supervisor and sshd logged last, and its power transitions: for a failure
    /// message, so that a host that did not come back says why.
    fn diagnostics(&self, address: &str) -> String {
        let dir = self.host_dir(address);
        let tail = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| format!("({e})\n"));
            let lines: Vec<&str> = text.lines().collect();
            format!("--- {name} (last lines)\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"))
        };
        ["supervisor.log", "sshd.log", "events", "upper/var/log/testbed-boot.log"].map(tail).concat()
    }

    /// The host's power transitions so far: ("up" | "down", epoch ms).
    fn events(&self, address: &str) -> Vec<(String, u64)> {
        let path = self.host_dir(address).join("events");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.lines()
            .map(|l| {
                let (what, ms) = l.split_once(' ').unwrap_or_else(|| panic!("bad events line {l:?}"));
                (what.to_owned(), ms.parse().unwrap_or_else(|e| panic!("bad time in {l:?}: {e}")))
            })
            .collect()
    }
}

fn config() -> SshConfig {
    SshConfig {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(60),
        ..SshConfig::default()
    }
}

/// Run a fixed script as root on a fresh connection; it must exit 0. Returns stdout.
async fn sh(tb: &Testbed, address: &str, script: &'static str) -> String {
    let out = SshTransport::new(config()).run(&tb.target(address), &Command::script(script)).await.expect(script);
    assert!(out.success(), "{script} on {address}: exit {:?}, stderr: {}", out.exit_status, out.stderr);
    out.stdout
}

async fn boot_id(tb: &Testbed, address: &str) -> String {
    sh(tb, address, "cat /proc/sys/kernel/random/boot_id").await.trim().to_owned()
}

/// Poll (fresh connection each time) until the host runs again with a boot id other than
/// `old`; returns the new one. On the way, records whether a connection was refused.
async fn wait_for_new_boot(tb: &Testbed, address: &str, old: &str) -> (String, bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut refused = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "{address} did not come back with a new boot id within 90 s\n{}",
            tb.diagnostics(address)
        );
        let ssh = SshTransport::new(SshConfig { connect_timeout: Duration::from_secs(2), ..config() });
        match ssh.run(&tb.target(address), &Command::new("cat").arg("/proc/sys/kernel/random/boot_id")).await {
            Ok(out) if out.success() && out.stdout.trim() != old => return (out.stdout.trim().to_owned(), refused),
            Ok(_) => {}
            Err(TransportError::Unreachable { reason, .. }) if reason.contains("connection refused") => refused = true,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reboot from inside the host the way the product does it (in the background, so that the
/// command returns), check that a running session is cut, and wait for the new boot.
async fn reboot(tb: &Testbed, address: &str) -> String {
    let old = boot_id(tb, address).await;
    let ssh = SshTransport::new(config());
    let long = {
        let (ssh, target) = (ssh.clone(), tb.target(address));
        tokio::spawn(async move { ssh.run(&target, &Command::new("sleep").arg("50")).await })
    };
    // wait until the long session really runs on the host
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sh(tb, address, "pgrep -fx 'sleep 50' >/dev/null && echo yes || echo no").await.starts_with("yes") {
        assert!(Instant::now() < deadline, "the long command did not start on {address}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = ssh
        .run(&tb.target(address), &Command::script("(sleep 1 && systemctl reboot) >/dev/null 2>&1 &"))
        .await
        .expect("issue the reboot");
    assert!(out.success(), "systemctl reboot: {}", out.stderr);

    let (new, refused) = wait_for_new_boot(tb, address, &old).await;
    assert_ne!(new, old);
    match long.await.expect("join") {
        Ok(out) => assert!(!out.success(), "the session running `sleep 50` was not cut by the reboot: {out:?}"),
        Err(e) => assert!(!matches!(e, TransportError::CommandTimedOut { .. }), "the session was not cut: {e}"),
    }
    assert!(refused, "{address} never refused a connection while rebooting");
    new
}

#[tokio::test]
async fn a_file_written_on_one_host_stays_on_that_host() {
    let tb = testbed();
    let (writer, reader) = (tb.host(Role::IsolationWriter), tb.host(Role::IsolationReader));
    tb.testbed("host-reset", &writer);
    tb.testbed("host-reset", &reader);
    let name = format!("/etc/commissaire-testbed-isolation-{}", uuid::Uuid::new_v4());

    let ssh = SshTransport::new(config());
    let out = ssh
        .run(&tb.target(&writer), &Command::script("echo written >\"$1\" && cat \"$1\"").arg(name.clone()))
        .await
        .expect("write");
    assert_eq!((out.stdout.as_str(), out.exit_status), ("written\n", Some(0)), "{}", out.stderr);

    let out = ssh.run(&tb.target(&reader), &Command::new("test").arg("-e").arg(name.clone())).await.expect("read");
    assert_eq!(out.exit_status, Some(1), "{name} written on {writer} is visible on {reader}");
    assert!(!std::path::Path::new(&name).exists(), "{name} written on {writer} reached the machine's /etc");
    // it landed in the writer's upper layer in the state dir
    let upper = tb.host_dir(&writer).join("upper").join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(&upper).expect("file in the writer's upper layer"), "written\n");

    // the hosts are machines of their own: own machine id, own boot id
    let ids = "cat /etc/machine-id /proc/sys/kernel/random/boot_id";
    assert_ne!(sh(&tb, &writer, ids).await, sh(&tb, &reader, ids).await);

    // after a reset the host is fresh again
    tb.testbed("host-reset", &writer);
    let out = ssh.run(&tb.target(&writer), &Command::new("test").arg("-e").arg(name.clone())).await.expect("test");
    assert_eq!(out.exit_status, Some(1), "{name} survived host-reset");
}

#[tokio::test]
async fn a_reboot_from_inside_cuts_sessions_and_comes_back_with_a_new_boot_id() {
    let tb = testbed();
    let host = tb.host(Role::Reboot);
    tb.testbed("host-reset", &host);
    sh(&tb, &host, "touch /run/before-reboot /etc/kept-across-reboot").await;
    let before = tb.events(&host).len();

    let old = boot_id(&tb, &host).await;
    let new = reboot(&tb, &host).await;
    assert_ne!(old, new);

    // /run is empty again, the disk is kept, tools see systemd as PID 1
    let after = sh(
        &tb,
        &host,
        "test -e /run/before-reboot && echo run-kept || echo run-empty; \
         test -e /etc/kept-across-reboot && echo disk-kept || echo disk-lost; cat /proc/1/comm",
    )
    .await;
    assert_eq!(after, "run-empty\ndisk-kept\nsystemd\n");

    // the host's side: exactly one down and one up since, down first
    let events: Vec<String> = tb.events(&host)[before..].iter().map(|(w, _)| w.clone()).collect();
    assert_eq!(events, ["down", "up"], "events of {host} since the reboot");
}

#[tokio::test]
async fn apt_upgrades_the_test_package_on_that_host_only() {
    let tb = testbed();
    let (host, other) = (tb.host(Role::Apt), tb.host(Role::Untouched));
    tb.testbed("host-reset", &host);
    let version = "dpkg-query -W -f='${Version}' commissaire-testpkg";
    assert_eq!(sh(&tb, &host, version).await, "1.0");

    let out = sh(
        &tb,
        &host,
        "export DEBIAN_FRONTEND=noninteractive; apt-get -q update && apt-get -q -y upgrade && \
         dpkg-query -W -f='${Version}' commissaire-testpkg",
    )
    .await;
    assert!(out.ends_with("1.1"), "{out}");
    assert_eq!(sh(&tb, &host, version).await, "1.1");

    assert_eq!(sh(&tb, &other, version).await, "1.0", "the upgrade reached another host");
    let machine = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "commissaire-testpkg"])
        .output()
        .expect("dpkg-query on the machine");
    assert!(
        !String::from_utf8_lossy(&machine.stdout).contains("installed"),
        "commissaire-testpkg is installed on the machine itself"
    );

    // services from the repository run through the systemctl stand-in
    let out = sh(
        &tb,
        &host,
        "export DEBIAN_FRONTEND=noninteractive; apt-get -q -y install flannel docker.io >/dev/null && \
         systemctl restart docker && systemctl is-active flanneld docker && \
         systemctl show -p NRestarts --value docker",
    )
    .await;
    assert_eq!(out, "active\nactive\n1\n");
}

#[tokio::test]
async fn an_ostree_host_boots_the_deployed_version_after_a_reboot() {
    let tb = testbed();
    let host = tb.ostree_host();
    tb.testbed("host-reset", &host);
    let facts = sh(&tb, &host, "test -e /run/ostree-booted && . /etc/os-release && echo \"$ID $VARIANT_ID\"").await;
    assert_eq!(facts, "fedora atomic.host\n");

    let booted = |status: &str| -> (String, Option<String>) {
        let v: serde_json::Value = serde_json::from_str(status).unwrap_or_else(|e| panic!("{e}: {status}"));
        let deployments = v["deployments"].as_array().unwrap_or_else(|| panic!("no deployments: {status}"));
        let version = |flag: &str| {
            deployments.iter().find(|d| d[flag] == true).map(|d| d["version"].as_str().expect("version").to_owned())
        };
        (version("booted").unwrap_or_else(|| panic!("nothing booted: {status}")), version("staged"))
    };
    assert_eq!(booted(&sh(&tb, &host, "rpm-ostree status --json").await), ("7.0".into(), None));

    let out = SshTransport::new(config())
        .run(&tb.target(&host), &Command::new("rpm-ostree").arg("deploy").arg(""))
        .await
        .expect("run");
    assert!(!out.success(), "an empty version must be refused");
    sh(&tb, &host, "rpm-ostree deploy 7.1 >/dev/null").await;
    assert_eq!(booted(&sh(&tb, &host, "rpm-ostree status --json").await), ("7.0".into(), Some("7.1".into())));

    reboot(&tb, &host).await;
    assert_eq!(booted(&sh(&tb, &host, "rpm-ostree status --json").await), ("7.1".into(), None));
    sh(&tb, &host, "test -e /run/ostree-booted").await;
}

#[tokio::test]
async fn host_down_refuses_connections_and_host_up_brings_it_back() {
    let tb = testbed();
    let host = tb.host(Role::DownUp);
    tb.testbed("host-reset", &host);
    let ssh = SshTransport::new(config());
    let before = ssh.run(&tb.target(&host), &Command::new("true")).await.expect("before");

    tb.testbed("host-down", &host);
    assert_eq!(tb.events(&host).last().map(|e| e.0.as_str()), Some("down"));
    for t in [ssh.clone(), SshTransport::new(config())] {
        match t.run(&tb.target(&host), &Command::new("true")).await {
            Err(TransportError::Unreachable { reason, .. }) => {
                assert!(reason.contains("connection refused"), "{reason}")
            }
            other => panic!("expected Unreachable while down, got {other:?}"),
        }
    }

    tb.testbed("host-up", &host);
    assert_eq!(tb.events(&host).last().map(|e| e.0.as_str()), Some("up"));
    let after = ssh.run(&tb.target(&host).pinned(before.host_key.clone()), &Command::new("true")).await.expect("after");
    assert_eq!(after.host_key, before.host_key, "same host key after host-up");
}
