//! The native playbook engine against real sshd test hosts, side by side with `ansible-playbook`
//! running the same files: what each task did (ok / changed / skipped / failed, debug messages)
//! and what ended up on the hosts must be the same.
//!
//! Needs the test bed's hosts (`scripts/testbed up --hosts 3`, `eval "$(scripts/testbed env)"`)
//! and, for the Ansible side, `COMMISSAIRE_ANSIBLE_PLAYBOOK` (set by scripts/test from
//! `scripts/install-ansible`); without it the Ansible half of each test is skipped with a message.
//!
//! The shared test hosts see this machine's filesystem, so these tests only write under a
//! directory of their own in the test bed's state dir. The bootstrap parity test needs hosts
//! with a filesystem of their own (`COMMISSAIRE_TEST_HOSTS_ISOLATED=1`) and is skipped
//! otherwise.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use commissaire_services::{
    playbook::{Playbook, PlaybookError, PlaybookRunner, TaskStatus},
    transport::{Command, HostTarget, SshConfig, SshTransport},
};
use serde_json::{Map, Value, json};

const HINT: &str = "the playbook tests need the sshd test hosts: run `scripts/testbed up --hosts 3` and \
                    `eval \"$(scripts/testbed env)\"` (scripts/test does both)";

struct Bed {
    hosts: Vec<String>,
    key_path: String,
    key: String,
    state_dir: PathBuf,
}

/// The tests of this file reset, reboot and bootstrap the same few hosts: one at a time.
static HOSTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bed() -> Bed {
    let hosts: Vec<String> = std::env::var("COMMISSAIRE_TEST_HOSTS")
        .unwrap_or_else(|_| panic!("COMMISSAIRE_TEST_HOSTS is not set: {HINT}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(hosts.len() >= 3, "3 test hosts are needed: {HINT}");
    let key_path = std::env::var("COMMISSAIRE_TEST_KEY").unwrap_or_else(|_| panic!("COMMISSAIRE_TEST_KEY: {HINT}"));
    let key = std::fs::read_to_string(&key_path).unwrap_or_else(|e| panic!("reading {key_path}: {e}"));
    let state_dir = PathBuf::from(
        std::env::var("COMMISSAIRE_TESTBED_DIR").unwrap_or_else(|_| "/tmp/commissaire-testbed".to_owned()),
    );
    Bed { hosts, key_path, key, state_dir }
}

impl Bed {
    fn target(&self, host: usize, user: &str) -> HostTarget {
        HostTarget::new(self.hosts[host].clone(), user, self.key.clone())
    }

    /// A fresh directory of this test under the state dir (visible to the shared hosts).
    fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.state_dir.join("playbook-tests").join(format!("{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }
}

fn ansible_playbook() -> Option<String> {
    match std::env::var("COMMISSAIRE_ANSIBLE_PLAYBOOK") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!(
                "SKIPPED the ansible-playbook half: COMMISSAIRE_ANSIBLE_PLAYBOOK is not set (run \
                 `export COMMISSAIRE_ANSIBLE_PLAYBOOK=$(scripts/install-ansible)`; scripts/test does it)"
            );
            None
        }
    }
}

fn runner() -> PlaybookRunner {
    PlaybookRunner::new(SshTransport::new(SshConfig::default()))
}

fn playbooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks")
}

/// (task name, status, message) of every task.
type Lines = Vec<(String, TaskStatus, String)>;

fn native_lines(report: &commissaire_services::playbook::PlaybookReport) -> Lines {
    report.tasks.iter().map(|t| (t.task.clone(), t.status, t.message.clone())).collect()
}

/// Run `playbook` with ansible-playbook on `address` as `user`; returns the exit code and the
/// per-task lines from the JSON callback.
fn run_ansible(
    ansible: &str,
    playbook: &Path,
    address: &str,
    user: &str,
    key_path: &str,
    vars: &Map<String, Value>,
) -> (i32, Lines) {
    let home = std::env::temp_dir().join(format!("commissaire-ansible-home-{}", uuid::Uuid::new_v4()));
    let callbacks = home.join("callback_plugins");
    std::fs::create_dir_all(&callbacks).expect("mkdir callback_plugins");
    std::fs::write(callbacks.join("commissaire_lines.py"), CALLBACK).expect("write callback plugin");
    let out = std::process::Command::new(ansible)
        .arg("-i")
        .arg(format!("{address},"))
        .arg("-u")
        .arg(user)
        .arg("--private-key")
        .arg(key_path)
        .arg("--forks")
        .arg("1")
        .arg("--extra-vars")
        .arg(Value::Object(vars.clone()).to_string())
        .arg("--extra-vars")
        .arg(r#"{"ansible_python_interpreter": "/usr/bin/python3"}"#)
        .arg(playbook)
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_SSH_ARGS", "-o ControlMaster=no -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no")
        .env("ANSIBLE_CALLBACK_PLUGINS", &callbacks)
        .env("ANSIBLE_STDOUT_CALLBACK", "commissaire_lines")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run ansible-playbook");
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("ansible-playbook JSON output: {e}\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    let mut lines = Vec::new();
    for t in doc["tasks"].as_array().into_iter().flatten() {
        assert_eq!(t["host"], json!(address));
        let status = match t["status"].as_str() {
            Some("ok") => TaskStatus::Ok,
            Some("changed") => TaskStatus::Changed,
            Some("skipped") => TaskStatus::Skipped,
            _ => TaskStatus::Failed,
        };
        lines.push((t["task"].as_str().unwrap_or("").to_owned(), status, t["msg"].as_str().unwrap_or("").to_owned()));
    }
    (out.status.code().unwrap_or(-1), lines)
}

/// A stdout callback for ansible-playbook: one JSON document with every task result (the
/// `json` callback lives in a collection that ansible-core does not ship).
const CALLBACK: &str = r#"
import json
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "commissaire_lines"

    def __init__(self):
        super().__init__()
        self.lines = []

    def _add(self, result, status):
        msg = result._result.get("msg")
        self.lines.append({
            "task": result._task.get_name(),
            "host": result._host.get_name(),
            "status": status,
            "msg": msg if isinstance(msg, str) else "",
        })

    def v2_runner_on_ok(self, result):
        self._add(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._add(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._add(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._add(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._display.display(json.dumps({"tasks": self.lines}))
"#;

fn vars(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("vars must be an object"),
    }
}

#[tokio::test]
async fn check_host_availability_natively_and_with_ansible() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    let pb = Playbook::load(playbooks_dir().join("check_host_availability.yaml")).expect("load");
    let runner = runner();
    for user in ["root", "commissaire"] {
        let report = runner.run(&pb, &bed.target(2, user), Map::new()).await.expect("available");
        assert_eq!(report.tasks.len(), 1);
        assert_eq!(report.tasks[0].status, TaskStatus::Ok, "{user}: {report:?}");
    }
    // nothing listens on port 22 of 127.0.0.99: unreachable, named as such
    let down = HostTarget::new("127.0.0.99", "root", bed.key.clone());
    match runner.run(&pb, &down, Map::new()).await {
        Err(PlaybookError::Unreachable { host, task, .. }) => {
            assert_eq!((host.as_str(), task.as_str()), ("127.0.0.99", "Ping the host"));
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }

    let Some(ansible) = ansible_playbook() else { return };
    let (rc, lines) = run_ansible(
        &ansible,
        &playbooks_dir().join("check_host_availability.yaml"),
        &bed.hosts[1],
        "commissaire",
        &bed.key_path,
        &Map::new(),
    );
    assert_eq!(rc, 0, "{lines:?}");
    assert_eq!(lines, vec![("Ping the host".to_owned(), TaskStatus::Ok, String::new())]);
    let (rc, _) = run_ansible(
        &ansible,
        &playbooks_dir().join("check_host_availability.yaml"),
        "127.0.0.99",
        "root",
        &bed.key_path,
        &Map::new(),
    );
    assert_eq!(rc, 4, "ansible-playbook reports an unreachable host with 4");
}

/// The engine's task semantics, compared with Ansible's on the same playbook: conditions,
/// register, changed_when / failed_when, ignore_errors, set_fact, command argv and shell with
/// `| quote`, copy and template into a scratch directory, stat, file. Values with shell syntax
/// in them must arrive as data.
const SEMANTICS: &str = r#"---
- name: semantics
  hosts: all
  gather_facts: no
  become: yes
  vars:
    greeting: "hello {{ who }}"
  tasks:
    - name: stat a missing path
      stat:
        path: "{{ dir }}/nothing-here"
      register: st
    - name: show stat
      debug:
        msg: "exists={{ st.stat.exists }}"
    - name: echo a hostile value
      command:
        argv: [printf, "%s", "{{ hostile }}"]
      register: echoed
      changed_when: false
    - name: show echo
      debug:
        msg: "{{ echoed.stdout }}"
    - name: skipped when false
      fail:
        msg: never
      when: st.stat.exists
    - name: a failure that is ignored
      command: /bin/false
      ignore_errors: yes
    - name: exit 3 is fine here
      command:
        argv: [sh, -c, "exit 3"]
      register: three
      failed_when: three.rc != 3
    - name: computed fact
      set_fact:
        rc_plus_one: "{{ three.rc + 1 }}"
    - name: show fact and play var
      debug:
        msg: "{{ rc_plus_one }} {{ greeting }}"
    - name: shell with a quoted value
      shell: printf '%s' {{ hostile | quote }} | wc -c
      register: counted
    - name: show count
      debug:
        msg: "{{ counted.stdout | trim }}"
    - name: subdirectory
      file:
        path: "{{ dir }}/sub"
        state: directory
        mode: "0750"
    - name: write content
      copy:
        content: "{{ hostile }}\n"
        dest: "{{ dir }}/sub/content.txt"
        mode: "0640"
    - name: write content again
      copy:
        content: "{{ hostile }}\n"
        dest: "{{ dir }}/sub/content.txt"
        mode: "0640"
    - name: render template
      template:
        src: t.j2
        dest: "{{ dir }}/sub/rendered.txt"
    - name: stat the file
      stat:
        path: "{{ dir }}/sub/rendered.txt"
      register: rendered
    - name: show file
      debug:
        msg: "{{ rendered.stat.exists }} {{ rendered.stat.isreg }} {{ rendered.stat.mode }}"
    - name: ping
      ping:
"#;

const TEMPLATE: &str = "# rendered\n{% if flag | bool %}\nFLAG=on\n{% endif %}\nVALUE={{ hostile | quote }}\n{% for i in items %}\nITEM{{ loop.index }}={{ i }}\n{% endfor %}\nEND={{ who }}\n";

const HOSTILE: &str = "$(touch /tmp/commissaire-pwned-semantics) `id` ; reboot 'q' \"dq\" \\ *";

#[tokio::test]
async fn task_semantics_match_ansible() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    let work = bed.scratch("semantics");
    let pb_dir = work.join("pb");
    std::fs::create_dir_all(pb_dir.join("templates")).expect("mkdir");
    std::fs::write(pb_dir.join("semantics.yaml"), SEMANTICS).expect("write playbook");
    std::fs::write(pb_dir.join("templates/t.j2"), TEMPLATE).expect("write template");
    let pb = Playbook::load(pb_dir.join("semantics.yaml")).expect("load");
    let marker = Path::new("/tmp/commissaire-pwned-semantics");
    let _ = std::fs::remove_file(marker);

    let args =
        |dir: &Path| vars(json!({"dir": dir, "hostile": HOSTILE, "who": "world", "flag": "yes", "items": ["a", "b"]}));
    let native_dir = work.join("native");
    std::fs::create_dir_all(&native_dir).expect("mkdir");
    let report = runner().run(&pb, &bed.target(2, "commissaire"), args(&native_dir)).await.expect("native run");
    let native = native_lines(&report);
    let status = |name: &str| native.iter().find(|l| l.0 == name).map(|l| l.1);
    assert_eq!(status("echo a hostile value"), Some(TaskStatus::Ok));
    assert_eq!(status("skipped when false"), Some(TaskStatus::Skipped));
    assert_eq!(status("a failure that is ignored"), Some(TaskStatus::Failed));
    assert_eq!(status("write content"), Some(TaskStatus::Changed));
    assert_eq!(status("write content again"), Some(TaskStatus::Ok), "same content: unchanged");
    let msg = |name: &str| native.iter().find(|l| l.0 == name).map(|l| l.2.clone()).unwrap_or_default();
    assert_eq!(msg("show echo"), HOSTILE);
    assert_eq!(msg("show count"), HOSTILE.len().to_string());
    assert_eq!(msg("show fact and play var"), "4 hello world");
    assert_eq!(msg("show file"), "True True 0644");
    let content = std::fs::read_to_string(native_dir.join("sub/content.txt")).expect("content");
    assert_eq!(content, format!("{HOSTILE}\n"));
    assert!(!marker.exists(), "a hostile value was executed");

    let Some(ansible) = ansible_playbook() else { return };
    let ansible_dir = work.join("ansible");
    std::fs::create_dir_all(&ansible_dir).expect("mkdir");
    let (rc, lines) = run_ansible(
        &ansible,
        &pb_dir.join("semantics.yaml"),
        &bed.hosts[1],
        "commissaire",
        &bed.key_path,
        &args(&ansible_dir),
    );
    assert_eq!(rc, 0, "{lines:#?}");
    // statuses and debug messages, task by task (failure messages differ in wording)
    assert_eq!(lines.len(), native.len(), "ansible: {lines:#?}\nnative: {native:#?}");
    for (a, n) in lines.iter().zip(&native) {
        assert_eq!((&a.0, a.1), (&n.0, n.1), "task status differs\nansible: {lines:#?}\nnative: {native:#?}");
        if a.0.starts_with("show") {
            assert_eq!(a.2, n.2, "debug message of {:?}", a.0);
        }
    }
    // the same files, byte for byte, with the same modes
    for file in ["sub/content.txt", "sub/rendered.txt"] {
        let a = std::fs::read(ansible_dir.join(file)).expect("ansible file");
        let n = std::fs::read(native_dir.join(file)).expect("native file");
        assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&n), "{file}");
        assert_eq!(mode(&ansible_dir.join(file)), mode(&native_dir.join(file)), "{file} mode");
    }
    assert_eq!(mode(&ansible_dir.join("sub")), mode(&native_dir.join("sub")));
    assert!(!marker.exists(), "a hostile value was executed");
    let _ = std::fs::remove_dir_all(&work);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[tokio::test]
async fn deploy_refuses_a_host_without_ostree_and_names_the_task() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    // the shared hosts are not OSTree hosts (no /run/ostree-booted on this machine)
    assert!(!Path::new("/run/ostree-booted").exists());
    let pb = Playbook::load(playbooks_dir().join("deploy.yaml")).expect("load");
    let err = runner()
        .run(&pb, &bed.target(2, "root"), vars(json!({"commissaire_deploy_version": "7.2; reboot"})))
        .await
        .expect_err("deploy must fail on a non-OSTree host");
    match &err {
        PlaybookError::TaskFailed { task, message, report, .. } => {
            assert_eq!(task, "Refuse to deploy on a host that does not run OSTree");
            assert!(message.contains("needs an OSTree"), "{message}");
            assert_eq!(report.tasks.len(), 2);
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    let transport = SshTransport::default();
    let out = transport.run(&bed.target(2, "root"), &Command::new("true")).await.expect("host still fine");
    assert!(out.success());
}

// ---------------------------------------------------------------------------------------------
// Tests that change hosts: only on test hosts with a filesystem of their own.

/// `true` if `address` has its own view of /etc (an overlay in its own mount namespace) rather
/// than this machine's: a read-only probe.
async fn isolated(bed: &Bed, host: usize) -> bool {
    let remote = SshTransport::default()
        .run(&bed.target(host, "root"), &Command::new("stat").args(["-f", "-c", "%T", "/etc"]))
        .await
        .expect("probe host");
    let local = std::process::Command::new("stat").args(["-f", "-c", "%T", "/etc"]).output().expect("stat");
    remote.success() && remote.stdout.trim() != String::from_utf8_lossy(&local.stdout).trim()
}

/// The hosts this test may change, or `None` (with a message) when they share this machine's
/// filesystem.
async fn isolated_hosts(bed: &Bed, wanted: &[usize]) -> Option<()> {
    for &h in wanted {
        if !isolated(bed, h).await {
            eprintln!(
                "SKIPPED: test host {} shares this machine's filesystem; this test changes /etc and installs \
                 packages, so it runs only on isolated test hosts (scripts/testbed with per-host overlays)",
                bed.hosts[h]
            );
            return None;
        }
    }
    Some(())
}

fn testbed_script() -> String {
    std::env::var("COMMISSAIRE_TESTBED").unwrap_or_else(|_| panic!("COMMISSAIRE_TESTBED is not set: {HINT}"))
}

/// `scripts/testbed host-reset ADDRESS`: the host back to its pristine filesystem.
fn reset(bed: &Bed, host: usize) {
    let out = std::process::Command::new("bash")
        .arg(testbed_script())
        .arg("host-reset")
        .arg(&bed.hosts[host])
        .output()
        .expect("run scripts/testbed host-reset");
    assert!(out.status.success(), "host-reset {}: {}", bed.hosts[host], String::from_utf8_lossy(&out.stderr));
}

async fn sh(bed: &Bed, host: usize, script: &'static str) -> String {
    let out = SshTransport::default().run(&bed.target(host, "root"), &Command::script(script)).await.expect("ssh");
    out.stdout
}

/// What a bootstrap leaves on a Debian test host.
async fn bootstrap_state(bed: &Bed, host: usize) -> String {
    sh(
        bed,
        host,
        "for f in /etc/default/flanneld /etc/default/docker; do echo \"== $f $(stat -c %a \"$f\")\"; cat \"$f\"; done; \
         dpkg-query -W -f='${Package} ${Status} ${Version}\\n' flannel docker.io; \
         for s in flanneld docker; do echo \"$s $(systemctl is-enabled $s) $(systemctl is-active $s)\"; done",
    )
    .await
}

fn debian_bootstrap_vars(address: &str) -> Map<String, Value> {
    use commissaire_core::model::Network;
    use commissaire_services::playbook::{BootstrapSettings, DockerRegistry, bootstrap_vars};
    let settings = BootstrapSettings {
        docker_registry: Some(DockerRegistry { host: "registry.example.com".into(), port: Some(5000) }),
        etcd_server_url: Some("http://127.0.0.1:2379".into()),
        ..Default::default()
    };
    bootstrap_vars(address, "debian", &Network::new("default"), &settings).expect("bootstrap vars")
}

#[tokio::test]
async fn bootstrap_parity_with_ansible() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    let Some(ansible) = ansible_playbook() else { return };
    if isolated_hosts(&bed, &[0, 1]).await.is_none() {
        return;
    }
    let (native_host, ansible_host) = (0, 1);
    reset(&bed, native_host);
    reset(&bed, ansible_host);
    let pb_path = playbooks_dir().join("bootstrap.yaml");
    let pb = Playbook::load(&pb_path).expect("load");
    let report = runner()
        .run(&pb, &bed.target(native_host, "commissaire"), debian_bootstrap_vars(&bed.hosts[native_host]))
        .await
        .unwrap_or_else(|e| panic!("native bootstrap: {e}"));
    let native = native_lines(&report);
    let (rc, lines) = run_ansible(
        &ansible,
        &pb_path,
        &bed.hosts[ansible_host],
        "commissaire",
        &bed.key_path,
        &debian_bootstrap_vars(&bed.hosts[ansible_host]),
    );
    assert_eq!(rc, 0, "ansible bootstrap: {lines:#?}");
    let statuses = |l: &Lines| l.iter().map(|(t, s, _)| (t.clone(), *s)).collect::<Vec<_>>();
    assert_eq!(statuses(&lines), statuses(&native), "task statuses differ");

    let n = bootstrap_state(&bed, native_host).await;
    let a = bootstrap_state(&bed, ansible_host).await;
    assert_eq!(n, a, "what the two bootstraps left differs");
    assert!(n.contains("FLANNEL_ETCD=http://127.0.0.1:2379\n"), "{n}");
    assert!(n.contains("--registry-mirror=http://registry.example.com:5000"), "{n}");
    assert!(n.contains("flanneld enabled active") && n.contains("docker enabled active"), "{n}");
    assert!(n.contains("== /etc/default/docker 644"), "{n}");

    // a second run installs and writes nothing; only the restarts change something
    let again = runner()
        .run(&pb, &bed.target(native_host, "root"), debian_bootstrap_vars(&bed.hosts[native_host]))
        .await
        .expect("second bootstrap");
    for t in &again.tasks {
        if t.task.starts_with("Enable and restart") {
            assert_eq!(t.status, TaskStatus::Changed, "{}", t.task);
        } else {
            assert_ne!(t.status, TaskStatus::Changed, "{}: nothing to change on the second run", t.task);
        }
    }
    assert_eq!(bootstrap_state(&bed, native_host).await, n, "the second run changed the host");
}

const MARKER: &str = "/tmp/commissaire-pwned-hostile";

/// Hostile values in every bootstrap variable that reaches a file or a command (bypassing the
/// checks of `bootstrap_vars`, as a hand-edited variable would): they end up as data, quoted,
/// and nothing else runs on the host.
#[tokio::test]
async fn hostile_values_stay_data() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    if isolated_hosts(&bed, &[2]).await.is_none() {
        return;
    }
    let host = 2;
    reset(&bed, host);
    let boot_id = || sh(&bed, host, "cat /proc/sys/kernel/random/boot_id");
    let before = boot_id().await;
    let pb = Playbook::load(playbooks_dir().join("bootstrap.yaml")).expect("load");
    let mut v = debian_bootstrap_vars(&bed.hosts[host]);
    let touch = format!("$(touch {MARKER})");
    v.insert("commissaire_flannel_key".into(), json!(touch));
    v.insert("commissaire_etcd_server_url".into(), json!(format!("http://x'; touch {MARKER}; '\nEVIL=1\n; reboot")));
    v.insert("commissaire_docker_registry_host".into(), json!(format!("\"`touch {MARKER}`\"")));
    v.insert("commissaire_flanneld_server".into(), json!("a\nFLANNEL_EXTRA=1"));
    let report = runner().run(&pb, &bed.target(host, "commissaire"), v.clone()).await.expect("bootstrap runs");
    assert_eq!(report.count(TaskStatus::Failed), 0, "{report:?}");
    let flannel = sh(&bed, host, "cat /etc/default/flanneld").await;
    // every value is one single-quoted shell word: sourcing the file defines only our names,
    // each holding exactly the value given
    const SOURCED: &str = "env -i sh -c '. /etc/default/flanneld; \
                           printf \"%s|%s|%s|%s\" \"${EVIL-unset}\" \"${FLANNEL_EXTRA-unset}\" \
                           \"$FLANNEL_ETCD_KEY\" \"$FLANNEL_ETCD\"'";
    let sourced = sh(&bed, host, SOURCED).await;
    let url = v["commissaire_etcd_server_url"].as_str().expect("url");
    assert_eq!(sourced, format!("unset|unset|{touch}|{url}"), "{flannel}");
    assert!(flannel.contains(&format!("FLANNEL_ETCD_KEY='{touch}'")), "{flannel}");
    let docker = sh(&bed, host, "cat /etc/default/docker").await;
    assert!(docker.contains(&format!("`touch {MARKER}`")), "{docker}");

    // a package name or a service name with shell syntax is refused before anything runs
    for (var, value) in [
        ("commissaire_flannel_package", format!("flannel; touch {MARKER}")),
        ("commissaire_docker_service", format!("docker$(touch {MARKER})")),
    ] {
        let mut bad = v.clone();
        bad.insert(var.into(), json!(value));
        let err = runner().run(&pb, &bed.target(host, "root"), bad).await.expect_err("refused");
        assert!(matches!(err, PlaybookError::TaskFailed { .. }), "{err}");
    }
    // deploy: the version is one argument after `--`
    let deploy = Playbook::load(playbooks_dir().join("deploy.yaml")).expect("load");
    let _ = runner()
        .run(
            &deploy,
            &bed.target(host, "root"),
            vars(json!({"commissaire_deploy_version": format!("1; touch {MARKER}")})),
        )
        .await;

    let exists = sh(&bed, host, "if [ -e /tmp/commissaire-pwned-hostile ]; then echo yes; else echo no; fi").await;
    assert_eq!(exists.trim(), "no", "a hostile value was executed on the host");
    assert!(!Path::new(MARKER).exists(), "a hostile value was executed on this machine");
    assert_eq!(boot_id().await, before, "the host rebooted");
}

/// restart.yaml natively: the host goes down and comes back with a new boot id.
#[tokio::test]
async fn restart_waits_for_a_new_boot_id() {
    let _hosts = HOSTS.lock().await;
    let bed = bed();
    if isolated_hosts(&bed, &[2]).await.is_none() {
        return;
    }
    let host = 2;
    let before = sh(&bed, host, "cat /proc/sys/kernel/random/boot_id").await;
    let pb = Playbook::load(playbooks_dir().join("restart.yaml")).expect("load");
    let report = runner()
        .run(&pb, &bed.target(host, "commissaire"), vars(json!({"commissaire_reboot_timeout": 120})))
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    assert_eq!(report.tasks[0].status, TaskStatus::Changed, "{report:?}");
    let after = sh(&bed, host, "cat /proc/sys/kernel/random/boot_id").await;
    assert_ne!(before.trim(), after.trim(), "boot id unchanged");
    assert!(!after.trim().is_empty());
}
