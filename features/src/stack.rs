//! The system under test, started from the workspace's binaries as separate
//! processes, the way an operator runs them:
//!
//! * [`Stack::multi_process`]: `commissaire-storage-service` (etcd from the test
//!   bed, a key namespace of its own) and `commissaire-server`, talking over
//!   RabbitMQ on an exchange of their own;
//! * [`Stack::all_in_one`]: `commissaire-server --all-in-one` with a fresh data
//!   directory.
//!
//! Both authenticate with HTTP Basic against a users file written here: `admin`
//! (read-write) and `viewer` (read-only), with random passwords. Every process is
//! killed when its [`Stack`] is dropped, also when a test panics.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use rand::{Rng, distributions::Alphanumeric};
use serde_json::json;

use crate::client::{Client, Request};

/// The watcher's interval in the stacks with host services (seconds), short so
/// that scenarios see a host fail and recover quickly.
pub const WATCHER_INTERVAL: &str = "1";
/// How long a process may take to become ready.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// bcrypt cost of the generated users (the server accepts any cost; 4 is fast).
const HASH_COST: u32 = 4;
/// Read-write user.
pub const ADMIN: &str = "admin";
/// Read-only user.
pub const VIEWER: &str = "viewer";

/// The binaries the suite runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: PathBuf,
    pub storage: PathBuf,
    pub investigator: PathBuf,
    pub containermgr: PathBuf,
    pub watcher: PathBuf,
    pub clusterexec: PathBuf,
}

impl Binaries {
    /// Finds the binaries in the target directory of the running test
    /// executable (`target/<profile>/deps/features-…` → `target/<profile>/`).
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot tell where the test executable is")?;
        let mut dirs = Vec::new();
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(parent) = dir.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
        let services = (
            find("commissaire-storage-service"),
            find("commissaire-investigator-service"),
            find("commissaire-containermgr-service"),
            find("commissaire-watcher-service"),
            find("commissaire-clusterexec-service"),
        );
        match (find("commissaire-server"), services) {
            (
                Some(server),
                (Some(storage), Some(investigator), Some(containermgr), Some(watcher), Some(clusterexec)),
            ) => {
                let bins = Self { server, storage, investigator, containermgr, watcher, clusterexec };
                bins.check_fresh()?;
                Ok(bins)
            }
            _ => bail!(
                "commissaire-server and the service binaries (storage, investigator, containermgr, watcher, clusterexec) were not found \
                 in {}: build them first with `cargo build --workspace --bins` (scripts/test builds them as part of \
                 `cargo test --workspace --all-targets`)",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
            ),
        }
    }
}

impl Binaries {
    /// Refuses binaries older than the workspace's sources: `cargo test -p
    /// commissaire-features` does not rebuild them, and testing yesterday's
    /// server would be misleading.
    fn check_fresh(&self) -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
        let services_bin = root.join("commissaire-services/src/bin");
        // What each binary is built from: its crates, other binaries' mains excluded.
        check_built_after(
            root,
            &self.server,
            &["commissaire-core", "commissaire-services", "commissaire-http"],
            &|p| !p.starts_with(&services_bin),
        )?;
        for binary in [&self.storage, &self.investigator, &self.containermgr, &self.watcher, &self.clusterexec] {
            let name = binary.file_name().and_then(|n| n.to_str()).context("a binary's file name")?;
            let main = services_bin.join(format!("{name}.rs"));
            check_built_after(root, binary, &["commissaire-core", "commissaire-services"], &|p| {
                !p.starts_with(&services_bin) || p == main
            })?;
        }
        Ok(())
    }
}

/// Fails when `binary` is older than the newest source of `crates` that
/// `include` accepts.
fn check_built_after(root: &Path, binary: &Path, crates: &[&str], include: SourceFilter<'_>) -> anyhow::Result<()> {
    let mut newest = None;
    for name in crates {
        newest_source(&root.join(name).join("src"), include, &mut newest);
    }
    let Some((source_time, source)) = newest else { return Ok(()) };
    let built = std::fs::metadata(binary).and_then(|m| m.modified())?;
    if built < source_time {
        bail!(
            "{} is older than {}: rebuild the binaries first with `cargo build --workspace --bins`",
            binary.display(),
            source.display()
        );
    }
    Ok(())
}

/// Which source files count.
type SourceFilter<'a> = &'a dyn Fn(&Path) -> bool;

/// The most recently modified `.rs` file under `dir` that `include` accepts.
fn newest_source(dir: &Path, include: SourceFilter<'_>, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            newest_source(&path, include, newest);
        } else if path.extension().is_some_and(|e| e == "rs")
            && include(&path)
            && let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            *newest = Some((modified, path));
        }
    }
}

/// A running child process, killed on drop; its output goes to a log file.
#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// Program and arguments, to start it again after a fault.
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    /// How the server answers (None for the services), for readiness after a restart.
    server_port: Option<u16>,
}

impl Process {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let program = command.get_program().to_os_string();
        let args = command.get_args().map(|a| a.to_os_string()).collect();
        let child = Self::start(name, &mut command, out)?;
        Ok(Self { name: name.to_string(), child, log, program, args, server_port: None })
    }

    fn start(name: &str, command: &mut Command, out: File) -> anyhow::Result<Child> {
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err).env("RUST_LOG", "info").env_remove("RUST_LOG_STYLE");
        command.spawn().with_context(|| format!("cannot start {name}"))
    }

    /// Starts the same command again (after [`Process::stop`]), its output
    /// appended to the same log.
    fn respawn(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        self.child = Self::start(&self.name, &mut command, out)?;
        Ok(())
    }

    /// Fails if the process has exited, with the end of its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited during start-up ({status}); its log ends with:\n{}", self.name, tail(&self.log, 30));
        }
        Ok(())
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn env(var: &str) -> anyhow::Result<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty()).with_context(|| {
        format!(
            "{var} is not set: start the test bed and export its endpoints first: \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"` (or run `scripts/test -p \
             commissaire-features`, which does both)"
        )
    })
}

/// A port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn random_password() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect()
}

/// A running system under test.
#[derive(Debug)]
pub struct Stack {
    /// What runs, for messages.
    pub description: String,
    pub client: Client,
    /// user → password.
    pub users: BTreeMap<String, String>,
    /// Each service binary's metrics endpoint (`--metrics-listen`), by binary name.
    pub metrics: BTreeMap<String, SocketAddr>,
    /// Stopped in reverse start order: the server first.
    processes: Vec<Process>,
    /// etcd URL and namespace to clean up after the run.
    etcd_namespace: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl Stack {
    /// The multi-process deployment: storage service on etcd, REST server, on
    /// AMQP; with `host_services`, also the investigator, cluster exec and
    /// watcher services.
    /// `extra_auth`: more `--authentication-plugin` arguments, tried after
    /// HTTP Basic (e.g. `kubetokenreview:server_url=…`).
    pub async fn multi_process(bins: &Binaries, host_services: bool, extra_auth: &[String]) -> anyhow::Result<Self> {
        Self::multi_process_on(bins, &env("COMMISSAIRE_AMQP_URL")?, host_services, extra_auth).await
    }

    /// [`Stack::multi_process`] on the bus at `bus_uri` (`amqp://…` or `redis://…`).
    pub async fn multi_process_on(
        bins: &Binaries,
        bus_uri: &str,
        host_services: bool,
        extra_auth: &[String],
    ) -> anyhow::Result<Self> {
        let amqp = bus_uri.to_string();
        let etcd = env("COMMISSAIRE_ETCD_URL")?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("features-{run}");
        let namespace = format!("/features-{run}");
        let extra = if host_services {
            format!(
                " + commissaire-investigator-service + commissaire-clusterexec-service \
                 + commissaire-watcher-service --interval {WATCHER_INTERVAL}"
            )
        } else {
            String::new()
        };
        let mut stack = Self::prepare(format!(
            "commissaire-storage-service (etcd {etcd}, namespace {namespace}) + commissaire-containermgr-service \
             + commissaire-server{extra}, \
             on bus {} exchange {exchange}",
            bus_uri.split(':').next().unwrap_or_default()
        ))?;
        stack.etcd_namespace = Some((etcd.clone(), namespace.clone()));

        let key = stack.dir.path().join("secrets.key");
        let output = Command::new(&bins.storage)
            .arg("--generate-secrets-key")
            .arg(&key)
            .output()
            .context("cannot run commissaire-storage-service --generate-secrets-key")?;
        if !output.status.success() {
            bail!("generating the secrets key failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let config = stack.dir.path().join("storage.conf");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({
                "bus_uri": amqp,
                "bus_exchange": exchange,
                "secrets_key_file": key,
                "storage_handlers": [{"type": "etcd", "server_url": etcd, "namespace": namespace, "models": ["*"]}],
            }))?,
        )?;
        let config = config.to_string_lossy().into_owned();
        stack.start_service(&bins.storage, &["--config-file", &config], "storage service ready").await?;
        let bus = ["--bus-uri", amqp.as_str(), "--bus-exchange", exchange.as_str()];
        stack.start_service(&bins.containermgr, &bus, "container manager service ready").await?;
        if host_services {
            stack.start_service(&bins.investigator, &bus, "investigator service ready").await?;
            stack.start_service(&bins.clusterexec, &bus, "clusterexec service ready").await?;
            let watcher = [&bus[..], &["--interval", WATCHER_INTERVAL]].concat();
            stack.start_service(&bins.watcher, &watcher, "watcher service ready").await?;
        }

        let users = stack.dir.path().join("users.json");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port()?;
            let mut server = Command::new(&bins.server);
            server
                .args(["--no-config-file", "--bus-uri", &amqp, "--bus-exchange", &exchange])
                .args(["--listen-interface", "127.0.0.1", "--listen-port", &port.to_string()])
                .arg("--authentication-plugin")
                .arg(format!("httpbasicauth:filepath={}", users.display()));
            for plugin in extra_auth {
                server.arg("--authentication-plugin").arg(plugin);
            }
            match stack.start_server(server, port).await {
                Ok(()) => return Ok(stack),
                Err(err) if attempts < 3 && err.to_string().contains("cannot listen") => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// The all-in-one deployment: one `commissaire-server --all-in-one`, with
    /// `--no-host-services` unless `host_services`.
    pub async fn all_in_one(bins: &Binaries, host_services: bool, extra_auth: &[String]) -> anyhow::Result<Self> {
        Self::all_in_one_at(bins, host_services, extra_auth, None, &[]).await
    }

    /// [`Stack::all_in_one`] with the data directory `data` (default: in the
    /// stack's directory), the server started through `prefix` (a command and
    /// its arguments, such as `nsenter -t PID -m --`, that ends by running the
    /// server in its own process).
    pub async fn all_in_one_at(
        bins: &Binaries,
        host_services: bool,
        extra_auth: &[String],
        data: Option<&Path>,
        prefix: &[&str],
    ) -> anyhow::Result<Self> {
        let mut stack = Self::prepare(if host_services {
            "commissaire-server --all-in-one (in-process bus, embedded store; watcher interval 1 s)"
        } else {
            "commissaire-server --all-in-one --no-host-services (in-process bus, embedded store)"
        })?;
        let data = data.map_or_else(|| stack.dir.path().join("data"), Path::to_path_buf);
        let users = stack.dir.path().join("users.json");
        let config = stack.dir.path().join("commissaire.conf");
        std::fs::write(&config, json!({"watcher": {"interval": WATCHER_INTERVAL.parse::<f64>()?}}).to_string())?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port()?;
            let mut server = match prefix.split_first() {
                Some((first, rest)) => {
                    let mut command = Command::new(first);
                    command.args(rest).arg(&bins.server);
                    command
                }
                None => Command::new(&bins.server),
            };
            server
                .arg("--config")
                .arg(&config)
                .args(["--all-in-one", "--data-dir"])
                .arg(&data)
                .args(["--listen-port", &port.to_string()])
                .args(if host_services { &[][..] } else { &["--no-host-services"][..] })
                .arg("--authentication-plugin")
                .arg(format!("httpbasicauth:filepath={}", users.display()));
            for plugin in extra_auth {
                server.arg("--authentication-plugin").arg(plugin);
            }
            match stack.start_server(server, port).await {
                Ok(()) => return Ok(stack),
                Err(err) if attempts < 3 && err.to_string().contains("cannot listen") => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// A temporary directory with the users file.
    fn prepare(description: impl Into<String>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("commissaire-features-").tempdir()?;
        let mut users = BTreeMap::new();
        let mut file = serde_json::Map::new();
        for (user, role) in [(ADMIN, "read-write"), (VIEWER, "read-only")] {
            let password = random_password();
            let hash = bcrypt::hash(&password, HASH_COST)?;
            file.insert(user.into(), json!({"hash": hash, "role": role}));
            users.insert(user.to_string(), password);
        }
        std::fs::write(dir.path().join("users.json"), serde_json::to_vec_pretty(&file)?)?;
        Ok(Self {
            description: description.into(),
            client: Client::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
            users,
            metrics: BTreeMap::new(),
            processes: Vec::new(),
            etcd_namespace: None,
            dir,
        })
    }

    /// Starts a service binary with `args` and its metrics endpoint on a free
    /// port, its log in the stack's directory, and waits until it logs `ready`.
    async fn start_service(&mut self, binary: &Path, args: &[&str], ready: &str) -> anyhow::Result<()> {
        let name = binary.file_name().and_then(|n| n.to_str()).context("a binary's file name")?.to_string();
        let mut command = Command::new(binary);
        command.args(args);
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        command.arg("--metrics-listen").arg(metrics.to_string());
        self.metrics.insert(name.clone(), metrics);
        let log = self.dir.path().join(format!("{name}.log"));
        self.processes.push(Process::spawn(&name, command, log)?);
        self.wait_for_log(ready).await
    }

    /// Waits until the last started process has written `needle` to its log.
    async fn wait_for_log(&mut self, needle: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let process = self.processes.last_mut().context("no process")?;
        loop {
            if std::fs::read_to_string(&process.log).unwrap_or_default().contains(needle) {
                return Ok(());
            }
            process.check_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {STARTUP_DEADLINE:?}; its log ends with:\n{}",
                    process.name,
                    tail(&process.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server and waits until it answers an authenticated request
    /// with data from storage (the default network it creates at start-up).
    async fn start_server(&mut self, command: Command, port: u16) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("server-{port}.log"));
        let mut process = Process::spawn("commissaire-server", command, log)?;
        process.server_port = Some(port);
        let client = Client::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let password = self.users[ADMIN].clone();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            process.check_running()?;
            let probe = Request::new(Method::GET, "/api/v0/network/default").basic_auth(ADMIN, &password);
            let last = match client.send_with_timeout(probe, Duration::from_secs(3)).await {
                Ok(response) if response.status == StatusCode::OK => break,
                Ok(response) => format!("{} {}", response.status, response.text()),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "commissaire-server was not ready within {STARTUP_DEADLINE:?} (last probe: {last}); its log ends \
                     with:\n{}",
                    tail(&process.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.client = client;
        self.processes.push(process);
        Ok(())
    }

    /// The names of the running processes, in start order (binary names; the
    /// server is `commissaire-server`).
    pub fn process_names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name.clone()).collect()
    }

    /// The log of process `name`, for messages.
    pub fn log_of(&self, name: &str) -> anyhow::Result<String> {
        let process = self.processes.iter().find(|p| p.name == name).with_context(|| format!("no process {name}"))?;
        Ok(std::fs::read_to_string(&process.log).unwrap_or_default())
    }

    /// Kills process `name` with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let process =
            self.processes.iter_mut().find(|p| p.name == name).with_context(|| format!("no process {name}"))?;
        process.stop();
        Ok(())
    }

    /// Starts the killed process `name` again with the same arguments and
    /// waits until it is ready: a service until it logs `ready` once more, the
    /// server until it answers an authenticated read. Returns how long that took.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let password = self.users[ADMIN].clone();
        let process =
            self.processes.iter_mut().find(|p| p.name == name).with_context(|| format!("no process {name}"))?;
        let readies_before = std::fs::read_to_string(&process.log).unwrap_or_default().matches("service ready").count();
        process.respawn()?;
        let deadline = started + STARTUP_DEADLINE;
        loop {
            process.check_running()?;
            let ready = match process.server_port {
                Some(port) => {
                    let client = Client::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                    let probe = Request::new(Method::GET, "/api/v0/network/default").basic_auth(ADMIN, &password);
                    matches!(client.send_with_timeout(probe, Duration::from_secs(3)).await,
                        Ok(response) if response.status == StatusCode::OK)
                }
                None => {
                    std::fs::read_to_string(&process.log).unwrap_or_default().matches("service ready").count()
                        > readies_before
                }
            };
            if ready {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} was not ready again within {STARTUP_DEADLINE:?}; its log ends with:\n{}",
                    tail(&process.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stack's temporary directory (logs, configuration, the all-in-one's data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops every process and removes what the run left in etcd.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
        if let Some((url, namespace)) = self.etcd_namespace.take() {
            let mut etcd = etcd_client::Client::connect([url], None).await.context("cannot connect to etcd")?;
            etcd.delete(namespace, Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .context("cannot remove the run's keys from etcd")?;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Server first, then the services it talks to.
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
    }
}
