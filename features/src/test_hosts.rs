//! The test bed's sshd test hosts, lent to scenarios one at a time.
//!
//! A scenario that needs a real host takes one with [`TestHosts::lease`]; the
//! host goes back to the pool when the lease is dropped (when the scenario's
//! world is dropped), so scenarios running at the same time never share a
//! host. OSTree hosts (`COMMISSAIRE_TEST_OSTREE_HOSTS`) are left out: they are
//! for the cluster operation scenarios that ask for them.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine;

/// How long a scenario waits for a free host before failing.
const LEASE_DEADLINE: Duration = Duration::from_secs(600);

/// The pool of test hosts and the keys that log in to them.
#[derive(Debug)]
pub struct TestHosts {
    free: Mutex<Vec<String>>,
    /// The test bed script, for `host-rekey` and friends.
    testbed: PathBuf,
    /// base64 of the private key that logs in as root on every test host.
    pub key: String,
    /// base64 of a valid private key that no test host accepts.
    pub other_key: String,
    _dir: tempfile::TempDir,
}

/// A host lent to a scenario; returned to the pool on drop.
#[derive(Debug)]
pub struct HostLease {
    pub address: String,
    pool: Arc<TestHosts>,
}

impl Drop for HostLease {
    fn drop(&mut self) {
        self.pool.free.lock().unwrap_or_else(PoisonError::into_inner).push(self.address.clone());
    }
}

fn env(var: &str) -> anyhow::Result<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty()).with_context(|| {
        format!(
            "{var} is not set: the host scenarios need the sshd test hosts: `bash scripts/testbed up --hosts 3 && \
             eval \"$(bash scripts/testbed env)\"` (scripts/test does both)"
        )
    })
}

impl TestHosts {
    /// The pool described by the test bed's environment.
    pub fn from_env() -> anyhow::Result<Arc<Self>> {
        let ostree: Vec<String> = std::env::var("COMMISSAIRE_TEST_OSTREE_HOSTS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let hosts: Vec<String> = env("COMMISSAIRE_TEST_HOSTS")?
            .split_whitespace()
            .filter(|h| !ostree.iter().any(|o| o == h))
            .map(str::to_string)
            .collect();
        if hosts.is_empty() {
            bail!("COMMISSAIRE_TEST_HOSTS lists no (non-OSTree) host");
        }
        let key_path = env("COMMISSAIRE_TEST_KEY")?;
        let key_text = std::fs::read(&key_path).with_context(|| format!("cannot read the test key {key_path}"))?;
        let dir = tempfile::Builder::new().prefix("commissaire-features-keys-").tempdir()?;
        let other = dir.path().join("other_key");
        let output = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "not-authorized", "-f"])
            .arg(&other)
            .output()
            .context("cannot run ssh-keygen")?;
        if !output.status.success() {
            bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let other_text = std::fs::read(&other)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Arc::new(Self {
            // Handed out from the end: the first hosts first.
            free: Mutex::new(hosts.into_iter().rev().collect()),
            testbed: PathBuf::from(env("COMMISSAIRE_TESTBED")?),
            key: b64.encode(key_text),
            other_key: b64.encode(other_text),
            _dir: dir,
        }))
    }

    /// Takes a free host, waiting for one if all are lent.
    pub async fn lease(self: &Arc<Self>) -> anyhow::Result<HostLease> {
        let deadline = Instant::now() + LEASE_DEADLINE;
        loop {
            if let Some(address) = self.free.lock().unwrap_or_else(PoisonError::into_inner).pop() {
                return Ok(HostLease { address, pool: self.clone() });
            }
            if Instant::now() >= deadline {
                bail!("no test host became free within {LEASE_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The host's reboots since its last reset, as `(down_ms, up_ms)` pairs
    /// from its `events` file (written by the test bed, not by the product).
    pub fn reboots(&self, address: &str) -> anyhow::Result<Vec<(u64, u64)>> {
        let dir = std::env::var("COMMISSAIRE_TESTBED_DIR").unwrap_or_else(|_| "/tmp/commissaire-testbed".into());
        let path = PathBuf::from(dir).join("ssh").join(format!("h{address}")).join("events");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut pairs = Vec::new();
        let mut down = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("down", ms)) => down = Some(ms.trim().parse::<u64>().context("a down time")?),
                Some(("up", ms)) => {
                    let up = ms.trim().parse::<u64>().context("an up time")?;
                    if let Some(d) = down.take() {
                        pairs.push((d, up));
                    }
                }
                _ => {}
            }
        }
        if down.is_some() {
            bail!("{address} went down and did not come back: {text}");
        }
        Ok(pairs)
    }

    /// Runs `scripts/testbed ARGS…` and returns its standard output.
    pub fn testbed(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("bash")
            .arg(&self.testbed)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {} {}", self.testbed.display(), args.join(" ")))?;
        if !output.status.success() {
            bail!("testbed {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
