//! The native playbook engine against `ansible-playbook`: the same playbook files
//! (`check_host_availability.yaml`, `bootstrap.yaml`) over 10 and 50 real sshd test hosts, both
//! sides in the same run, on the same hosts.
//!
//! * native: this bench starts itself again as a child process (`--native-child`) that runs the
//!   playbook on every host at once with one `PlaybookRunner` (one tokio runtime, one SSH
//!   transport) and reports what the tasks did;
//! * Ansible: `ansible-playbook --forks N` (N = number of hosts), pipelining on, OpenSSH
//!   ControlMaster/ControlPersist on (no `-C`: compression only costs CPU on loopback), the
//!   per-host bootstrap variables in an inventory file.
//!
//! Wall time is from the start of the process to its exit, so both include their start-up.
//! CPU time is each side's own processes, not the hosts': the native child; ansible-playbook,
//! its forks and their ssh clients (`getrusage` of the waited-for children), plus the detached
//! ssh ControlPersist masters (their `/proc` CPU times, sampled every 50 ms: a lower bound).
//! Memory:
//! * native peak RSS: the child's own `VmHWM` (it has no child processes), read at its end;
//! * Ansible, two figures over its process tree (ansible-playbook, its forks and the `ssh`
//!   processes, including the ControlPersist masters that leave the tree, found by the control
//!   path directory of the run): the peak of the summed `VmRSS` (sampled every 50 ms) and the
//!   largest single process's `VmHWM`.
//!
//! Before each bootstrap run every host goes back to a fresh disk (`scripts/testbed host-reset`)
//! so both sides install the same packages; each side then runs `bootstrap` once more on the
//! same, now converged, hosts (row `bootstrap, converged`): nothing left to install, so the
//! figure is the engines' own cost over the same tasks. A failed or unreachable task on either side is
//! reported and fails the bench.
//!
//! Run: `scripts/testbed up --hosts 50 && eval "$(scripts/testbed env)" &&
//! COMMISSAIRE_ANSIBLE_PLAYBOOK=$(scripts/install-ansible) cargo bench -p commissaire-services
//! --bench ansible`. `ANSIBLE_BENCH_HOSTS` (default `10,50`) sets the host counts. Without
//! `--bench` (as under `cargo test --all-targets`) it is a smoke run: `check_host_availability`
//! over at most 3 hosts; the Ansible half only when `COMMISSAIRE_ANSIBLE_PLAYBOOK` is set.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use commissaire_core::model::Network;
use commissaire_services::{
    playbook::{
        BootstrapSettings, DockerRegistry, Playbook, PlaybookError, PlaybookRunner, TaskStatus, bootstrap_vars,
    },
    transport::{HostTarget, SshConfig, SshTransport},
};
use serde_json::{Map, Value, json};

const HINT: &str = "run `scripts/testbed up --hosts 50`, `eval \"$(scripts/testbed env)\"` and \
                    `export COMMISSAIRE_ANSIBLE_PLAYBOOK=$(scripts/install-ansible)` first";

fn playbooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks")
}

/// The per-host variables of a playbook.
fn host_vars(playbook: &str, address: &str) -> Map<String, Value> {
    if playbook != "bootstrap" {
        return Map::new();
    }
    let settings = BootstrapSettings {
        docker_registry: Some(DockerRegistry { host: "registry.example.com".into(), port: Some(5000) }),
        etcd_server_url: Some("http://127.0.0.1:2379".into()),
        ..Default::default()
    };
    bootstrap_vars(address, "debian", &Network::new("default"), &settings).expect("bootstrap variables")
}

/// Task results summed over the hosts, counted as Ansible's recap counts them (`ok` includes
/// `changed`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    ok: u64,
    changed: u64,
    skipped: u64,
    failed: u64,
    unreachable: u64,
}

impl Tally {
    fn to_json(self) -> Value {
        json!({"ok": self.ok, "changed": self.changed, "skipped": self.skipped, "failed": self.failed,
               "unreachable": self.unreachable})
    }
    fn from_json(v: &Value) -> Tally {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Tally {
            ok: n("ok"),
            changed: n("changed"),
            skipped: n("skipped"),
            failed: n("failed"),
            unreachable: n("unreachable"),
        }
    }
    fn bad(&self) -> bool {
        self.failed > 0 || self.unreachable > 0
    }
}

/// The native side, in its own process: `--native-child PLAYBOOK KEY_PATH HOST...`. Prints one
/// JSON line: the tally, the first error and the process's peak RSS.
fn native_child(args: &[String]) -> ! {
    let [name, key_path, hosts @ ..] = args else {
        eprintln!("usage: --native-child PLAYBOOK KEY_PATH HOST...");
        std::process::exit(2)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let (tally, first_error) = runtime.block_on(async {
        let key = std::fs::read_to_string(key_path).expect("client key");
        let playbook = Playbook::load(playbooks_dir().join(format!("{name}.yaml"))).expect("load playbook");
        // every host at once, as Ansible with forks = hosts; the transport's session limit stays
        // above the host count
        let config = SshConfig { max_sessions: hosts.len().max(64), ..SshConfig::default() };
        let runner = PlaybookRunner::new(SshTransport::new(config));
        let runs = hosts.iter().map(|address| {
            let target = HostTarget::new(address.clone(), "commissaire", key.clone());
            let runner = runner.clone();
            let playbook = &playbook;
            async move { runner.run(playbook, &target, host_vars(name, &target.address)).await }
        });
        let mut tally = Tally::default();
        let mut first_error = None;
        for result in futures_util::future::join_all(runs).await {
            let report = match result {
                Ok(report) => report,
                Err(e) => {
                    match &e {
                        PlaybookError::Unreachable { .. } => tally.unreachable += 1,
                        _ => tally.failed += 1,
                    }
                    first_error.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            for task in &report.tasks {
                match task.status {
                    TaskStatus::Ok => tally.ok += 1,
                    TaskStatus::Changed => {
                        tally.ok += 1;
                        tally.changed += 1;
                    }
                    TaskStatus::Skipped => tally.skipped += 1,
                    // ignored failures: none in these playbooks, so any failure counts
                    TaskStatus::Failed => {
                        tally.failed += 1;
                        first_error.get_or_insert_with(|| format!("{}: {}: {}", report.host, task.task, task.message));
                    }
                }
            }
        }
        (tally, first_error)
    });
    drop(runtime);
    let hwm = proc_status_kib(std::process::id(), "VmHWM:").unwrap_or(0);
    println!("{}", json!({"tally": tally.to_json(), "error": first_error, "vm_hwm_kib": hwm}));
    std::process::exit(i32::from(tally.bad()))
}

/// A `Vm*:` field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// What the sampler saw of a process tree.
#[derive(Debug, Default)]
struct Memory {
    /// CPU clock ticks (utime + stime) of each detached ssh ControlPersist master seen: they
    /// are nobody's waited-for child, so `getrusage` of the children misses them
    master_ticks: HashMap<u32, u64>,
    /// the largest sum of VmRSS over the tree at one sample, KiB
    peak_sum_kib: u64,
    /// VmHWM of each process seen, KiB
    hwm_kib: HashMap<u32, u64>,
    /// the most processes at one sample
    peak_processes: usize,
}

/// Every process under `root` (by parent pid), plus those whose command line holds `marker`
/// (ssh ControlPersist masters detach from the tree); and which of them are such detached
/// masters (not under `root` any more).
fn tree(root: u32, marker: Option<&str>) -> (Vec<u32>, HashSet<u32>) {
    let mut parent_of = Vec::new();
    let mut marked = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // the comm field may hold spaces: the fields after its closing parenthesis
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) else { continue };
        parent_of.push((pid, ppid));
        if let Some(marker) = marker
            && rest.split_whitespace().next() != Some("Z")
            && stat.contains("(ssh)")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        {
            marked.insert(pid);
        }
    }
    let grow = |mut members: HashSet<u32>| loop {
        let before = members.len();
        for &(pid, ppid) in &parent_of {
            if members.contains(&ppid) {
                members.insert(pid);
            }
        }
        if members.len() == before {
            break members;
        }
    };
    let under_root = grow([root].into_iter().collect());
    let detached: HashSet<u32> = marked.difference(&under_root).copied().collect();
    let members = grow(under_root.into_iter().chain(marked).collect());
    (members.into_iter().collect(), detached)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // after the comm: state is field 3, utime 14 and stime 15
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU time used by this process's waited-for children (and theirs) so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            tv(u.user_time()) + tv(u.system_time())
        })
        .unwrap_or_default()
}

/// Sample the tree of `root` every 50 ms until `done`.
fn sample(root: u32, marker: Option<String>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Memory> {
    std::thread::spawn(move || {
        let mut memory = Memory::default();
        while !done.load(Ordering::Relaxed) {
            let mut sum = 0;
            let (pids, detached) = tree(root, marker.as_deref());
            memory.peak_processes = memory.peak_processes.max(pids.len());
            for pid in detached {
                if let Some(ticks) = cpu_ticks(pid) {
                    let seen = memory.master_ticks.entry(pid).or_default();
                    *seen = (*seen).max(ticks);
                }
            }
            for pid in pids {
                if let Some(rss) = proc_status_kib(pid, "VmRSS:") {
                    sum += rss;
                }
                if let Some(hwm) = proc_status_kib(pid, "VmHWM:") {
                    let seen = memory.hwm_kib.entry(pid).or_default();
                    *seen = (*seen).max(hwm);
                }
            }
            memory.peak_sum_kib = memory.peak_sum_kib.max(sum);
            std::thread::sleep(Duration::from_millis(50));
        }
        memory
    })
}

struct Side {
    wall: Duration,
    /// CPU time of the whole side: the native child; ansible-playbook with its forks and
    /// their ssh clients (`getrusage`), plus the ControlPersist masters (sampled)
    cpu: Duration,
    tally: Tally,
    /// peak RSS, KiB: native: its VmHWM; Ansible: the peak of the summed tree
    rss_kib: u64,
    /// Ansible only: the largest single process's VmHWM, KiB
    largest_kib: u64,
    processes: usize,
    error: Option<String>,
}

fn run_native(name: &str, hosts: &[String], key_path: &str) -> Side {
    let exe = std::env::current_exe().expect("the bench's own path");
    let started = Instant::now();
    let cpu_before = children_cpu();
    let child = Command::new(exe)
        .arg("--native-child")
        .arg(name)
        .arg(key_path)
        .args(hosts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the native child");
    let out = child.wait_with_output().expect("native child");
    let wall = started.elapsed();
    let cpu = children_cpu().saturating_sub(cpu_before);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("native child ({}) printed no result: {stdout}", out.status));
    let tally = Tally::from_json(&doc["tally"]);
    let mut error = doc["error"].as_str().map(str::to_owned);
    if !out.status.success() && error.is_none() {
        error = Some(format!("native child exited with {}", out.status));
    }
    Side {
        wall,
        cpu,
        tally,
        rss_kib: doc["vm_hwm_kib"].as_u64().unwrap_or(0),
        largest_kib: doc["vm_hwm_kib"].as_u64().unwrap_or(0),
        processes: 1,
        error,
    }
}

fn run_ansible(ansible: &str, name: &str, hosts: &[String], key_path: &str) -> Side {
    let work = tempfile::Builder::new().prefix("cab-").tempdir_in("/tmp").expect("tempdir");
    // short: the control sockets live here and a socket path has at most 107 bytes
    let control_dir = work.path().join("cp");
    std::fs::create_dir_all(&control_dir).expect("control path dir");
    let mut inventory_hosts = Map::new();
    for address in hosts {
        let mut vars = host_vars(name, address);
        vars.insert("ansible_python_interpreter".into(), json!("/usr/bin/python3"));
        inventory_hosts.insert(address.clone(), Value::Object(vars));
    }
    let inventory = work.path().join("inventory.yml");
    // JSON is YAML: the yaml inventory plugin reads it
    std::fs::write(&inventory, json!({"all": {"hosts": inventory_hosts}}).to_string()).expect("inventory");
    let started = Instant::now();
    let cpu_before = children_cpu();
    let child = Command::new(ansible)
        .arg("-i")
        .arg(&inventory)
        .arg("-u")
        .arg("commissaire")
        .arg("--private-key")
        .arg(key_path)
        .arg("--forks")
        .arg(hosts.len().to_string())
        .arg(playbooks_dir().join(format!("{name}.yaml")))
        .env("ANSIBLE_HOME", work.path().join("home"))
        .env("ANSIBLE_LOCAL_TEMP", work.path().join("tmp"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env(
            "ANSIBLE_SSH_ARGS",
            "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
        )
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control_dir)
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ansible-playbook");
    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample(child.id(), Some(control_dir.to_string_lossy().into_owned()), done.clone());
    let out = child.wait_with_output().expect("ansible-playbook");
    let wall = started.elapsed();
    let waited_cpu = children_cpu().saturating_sub(cpu_before);
    done.store(true, Ordering::Relaxed);
    let memory = sampler.join().expect("sampler");
    // /proc reports CPU times in USER_HZ, 100 per second on Linux
    let master_ticks: u64 = memory.master_ticks.values().sum();
    let cpu = waited_cpu + Duration::from_millis(master_ticks * 10);
    stop_control_masters(&control_dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tally = recap(&stdout);
    let error = if out.status.success() && !tally.bad() && tally.ok > 0 {
        None
    } else {
        let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
        Some(format!(
            "ansible-playbook exited with {}:\n{}\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    Side {
        wall,
        cpu,
        tally,
        rss_kib: memory.peak_sum_kib,
        largest_kib: memory.hwm_kib.values().copied().max().unwrap_or(0),
        processes: memory.peak_processes,
        error,
    }
}

/// End the ControlPersist masters of a run (they would linger 60 s): `ssh -O exit` per socket.
fn stop_control_masters(control_dir: &Path) {
    for entry in std::fs::read_dir(control_dir).into_iter().flatten().flatten() {
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", entry.path().display()))
            .args(["-O", "exit", "placeholder"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The PLAY RECAP of the default callback, summed over the hosts.
fn recap(stdout: &str) -> Tally {
    let mut tally = Tally::default();
    let Some(start) = stdout.find("PLAY RECAP") else { return tally };
    for line in stdout[start..].lines().skip(1) {
        let Some((_, counts)) = line.split_once(" : ") else { continue };
        for pair in counts.split_whitespace() {
            let Some((k, v)) = pair.split_once('=') else { continue };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "ok" => tally.ok += v,
                "changed" => tally.changed += v,
                "skipped" => tally.skipped += v,
                "failed" => tally.failed += v,
                "unreachable" => tally.unreachable += v,
                _ => {}
            }
        }
    }
    tally
}

/// Every host back to a fresh disk, 10 at a time.
fn reset_hosts(testbed: &str, hosts: &[String]) {
    for batch in hosts.chunks(10) {
        let children: Vec<_> = batch
            .iter()
            .map(|h| {
                let child = Command::new("bash")
                    .arg(testbed)
                    .arg("host-reset")
                    .arg(h)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("scripts/testbed host-reset");
                (h, child)
            })
            .collect();
        for (h, child) in children {
            let out = child.wait_with_output().expect("host-reset");
            assert!(out.status.success(), "host-reset {h}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--native-child") {
        native_child(&args[i + 1..]);
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let all_hosts: Vec<String> = std::env::var("COMMISSAIRE_TEST_HOSTS")
        .unwrap_or_else(|_| {
            eprintln!("COMMISSAIRE_TEST_HOSTS is not set: {HINT}");
            std::process::exit(2)
        })
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let key_path = std::env::var("COMMISSAIRE_TEST_KEY").unwrap_or_else(|_| {
        eprintln!("COMMISSAIRE_TEST_KEY is not set: {HINT}");
        std::process::exit(2)
    });
    let ansible = std::env::var("COMMISSAIRE_ANSIBLE_PLAYBOOK").ok().filter(|p| !p.is_empty());
    let testbed = std::env::var("COMMISSAIRE_TESTBED").ok();

    let (counts, playbooks): (Vec<usize>, &[&str]) = if smoke {
        (vec![all_hosts.len().min(3)], &["check_host_availability"])
    } else {
        let counts = std::env::var("ANSIBLE_BENCH_HOSTS")
            .unwrap_or_else(|_| "10,50".into())
            .split(',')
            .map(|n| n.trim().parse().expect("ANSIBLE_BENCH_HOSTS: numbers separated by commas"))
            .collect();
        (counts, &["check_host_availability", "bootstrap"])
    };
    let Some(ansible) = ansible.or_else(|| {
        eprintln!("COMMISSAIRE_ANSIBLE_PLAYBOOK is not set: {HINT}");
        if smoke { None } else { std::process::exit(2) }
    }) else {
        // smoke run without Ansible: the native half only, so the bench still runs
        let hosts = &all_hosts[..counts[0]];
        let side = run_native("check_host_availability", hosts, &key_path);
        println!(
            "native check_host_availability over {} hosts: {:.2} s, SMOKE RUN without Ansible",
            hosts.len(),
            side.wall.as_secs_f64()
        );
        assert!(side.error.is_none(), "native: {:?}", side.error);
        return;
    };

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &n in &counts {
        assert!(n > 0 && n <= all_hosts.len(), "{n} hosts wanted, the test bed has {}: {HINT}", all_hosts.len());
        let hosts = &all_hosts[..n];
        for &name in playbooks {
            let reset = |side: &str| {
                if name == "bootstrap" {
                    let testbed =
                        testbed.as_deref().unwrap_or_else(|| panic!("COMMISSAIRE_TESTBED is not set: {HINT}"));
                    eprintln!("resetting {n} hosts for the {side} bootstrap");
                    reset_hosts(testbed, hosts);
                }
            };
            // A bootstrap runs twice on each side: on fresh hosts (the packages installed),
            // then at once again on the same hosts (already converged), which leaves out the
            // hosts' apt and dpkg work and shows what each engine itself costs.
            let again = name == "bootstrap";
            reset("native");
            eprintln!("{name} over {n} hosts: native");
            let native = run_native(name, hosts, &key_path);
            let native_again = again.then(|| run_native(name, hosts, &key_path));
            reset("ansible");
            eprintln!("{name} over {n} hosts: ansible-playbook");
            let ansible_side = run_ansible(&ansible, name, hosts, &key_path);
            let ansible_again = again.then(|| run_ansible(&ansible, name, hosts, &key_path));
            let mut runs = vec![(name, native, ansible_side)];
            if let (Some(native), Some(ansible)) = (native_again, ansible_again) {
                runs.push(("bootstrap, converged", native, ansible));
            }
            for (label, native, ansible) in runs {
                for (side, s) in [("native", &native), ("ansible", &ansible)] {
                    if let Some(e) = &s.error {
                        failures.push(format!("{label} over {n} hosts, {side}: {e}"));
                    }
                }
                if native.tally != ansible.tally {
                    eprintln!(
                        "{label} over {n} hosts: the task tallies differ: native {:?}, ansible {:?}",
                        native.tally, ansible.tally
                    );
                }
                rows.push((label, n, native, ansible, load_average()));
            }
        }
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nNative engine against ansible-playbook (forks = hosts, pipelining, ControlPersist){}",
        if smoke { ", SMOKE RUN" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:<24} {:>5} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>10} {:>11} {:>12} {:>6} {:>7} {:>14}",
        "playbook",
        "hosts",
        "native s",
        "ansible s",
        "ratio",
        "nat. CPU",
        "ans. CPU",
        "ratio",
        "native MiB",
        "ansible MiB",
        "largest MiB",
        "procs",
        "changed",
        "load avg"
    );
    for (name, n, native, ansible, load) in &rows {
        let _ = writeln!(
            out,
            "{:<24} {:>5} {:>9.2} {:>9.2} {:>6.1}x {:>9.2} {:>9.2} {:>6.0}x {:>10} {:>11} {:>12} {:>6} {:>7} {:>14}",
            name,
            n,
            native.wall.as_secs_f64(),
            ansible.wall.as_secs_f64(),
            ansible.wall.as_secs_f64() / native.wall.as_secs_f64(),
            native.cpu.as_secs_f64(),
            ansible.cpu.as_secs_f64(),
            ansible.cpu.as_secs_f64() / native.cpu.as_secs_f64().max(1e-3),
            mib(native.rss_kib),
            mib(ansible.rss_kib),
            mib(ansible.largest_kib),
            ansible.processes.max(native.processes),
            format!("{}/{}", native.tally.changed, ansible.tally.changed),
            load
        );
    }
    let _ = writeln!(
        out,
        "ratio = ansible wall / native wall (goal >= 20x). nat./ans. CPU: CPU seconds of each side's own \
         processes (the engine, not the hosts): the native child; ansible-playbook, its forks and their ssh \
         clients (getrusage), plus its ssh ControlPersist masters (sampled every 50 ms, so a lower bound). \
         native MiB: the native process's peak RSS (VmHWM); \
         ansible MiB: peak of the summed RSS of ansible-playbook's process tree and its ssh masters (sampled \
         every 50 ms); largest MiB: the largest single Ansible process's peak (VmHWM); procs: most Ansible \
         processes at once; changed: changed tasks native/ansible."
    );
    let _ = out.flush();
    assert!(failures.is_empty(), "playbook runs failed:\n{}", failures.join("\n"));
}
