//! commctl against a real `commissaire-server --all-in-one` (built with
//! `cargo build --workspace --bins`):
//!
//! * `passhash`: the hash it prints, put in the server's users file, logs in;
//! * `user-data`: the first-boot script, run on a test host the way cloud-init
//!   runs a `text/x-shellscript` part (written under
//!   `/var/lib/cloud/instance/scripts/` and executed as root), registers the
//!   host, which the server then investigates and bootstraps to `active` in
//!   its cluster;
//! * `host ssh`: an interactive session in tmux (log in, run a command, exit),
//!   a command run through it, and a SIGTERM during a session; the private key
//!   is on disk (0600) only while ssh runs.
//!
//! The user-data test needs the test bed's hosts (`scripts/testbed up --hosts N`
//! and `eval "$(scripts/testbed env)"`); it uses the last non-OSTree host, or
//! `COMMCTL_TEST_HOST`.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(120);

fn commctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_commctl"))
}

fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("commissaire-server"))
        .find(|p| p.is_file())
        .expect("commissaire-server not found next to the tests: run `cargo build --workspace --bins` first")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn run(config: &Path, args: &[&str]) -> Run {
    run_with(config, args, &[])
}

fn run_with(config: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut command = Command::new(commctl());
    command.arg("--config").arg(config).args(args).stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run commctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write_config(path: &Path, port: u16, user: &str, password: &str) {
    let config = json!({"endpoint": format!("http://127.0.0.1:{port}"), "username": user, "password": password});
    std::fs::write(path, config.to_string()).expect("write config");
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, host_services: bool) -> Self {
        Self::start_with(dir, host_services, &[])
    }

    fn start_with(dir: &Path, host_services: bool, extra: &[String]) -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("port").port();
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(server_binary());
        command
            .args(["--all-in-one", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-interface", "127.0.0.1", "--listen-port", &port.to_string()])
            .arg("--authentication-plugin")
            .arg(format!("httpbasicauth:filepath={}", dir.join("users.json").display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        if !host_services {
            command.arg("--no-host-services");
        }
        command.args(extra);
        let child = command.spawn().expect("start commissaire-server");
        Self { child, port, log }
    }

    /// Waits until `commctl network get default` answers with this configuration.
    fn wait_ready(&mut self, config: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}): {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            let run = run(config, &["network", "get", "default"]);
            if run.code == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "the server was not ready: {run:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `commctl passhash` → users file.
fn users_file(dir: &Path, user: &str, password: &str) {
    let hash =
        Command::new(commctl()).args(["passhash", "--rounds", "4", "--password", password]).output().expect("passhash");
    assert!(hash.status.success(), "{}", String::from_utf8_lossy(&hash.stderr));
    let hash = String::from_utf8(hash.stdout).expect("utf-8").trim().to_string();
    assert!(hash.starts_with("$2b$04$"), "{hash}");
    let users = json!({user: {"hash": hash, "role": "read-write"}});
    std::fs::write(dir.join("users.json"), users.to_string()).expect("users file");
}

#[test]
fn a_passhash_hash_logs_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "correct horse \"battery\" staple";
    users_file(dir.path(), "operator", password);
    let mut server = Server::start(dir.path(), false);
    let config = dir.path().join("commissaire.json");
    write_config(&config, server.port, "operator", password);
    server.wait_ready(&config);

    let ok = run(&config, &["cluster", "create", "from-hash"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let listed = run(&config, &["cluster", "list"]);
    assert_eq!(listed.stdout.trim(), "from-hash", "{listed:?}");

    // The same password from a file (one line end is not part of it).
    let file = dir.path().join("password.txt");
    std::fs::write(&file, format!("{password}\n")).expect("write");
    let from_file = Command::new(commctl()).args(["passhash", "-r", "4", "-f"]).arg(&file).output().expect("passhash");
    let hash = String::from_utf8(from_file.stdout).expect("utf-8");
    assert!(bcrypt::verify(password, hash.trim()).expect("verify"), "{hash}");

    write_config(&config, server.port, "operator", "wrong");
    let refused = run(&config, &["cluster", "list"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("HTTP 401"), "{refused:?}");
}

fn testbed() -> String {
    std::env::var("COMMISSAIRE_TESTBED").unwrap_or_else(|_| {
        panic!("COMMISSAIRE_TESTBED is not set: start the test bed with hosts and export its variables: `bash scripts/testbed up --hosts 3 && eval \"$(bash scripts/testbed env)\"`")
    })
}

fn testbed_cmd(args: &[&str]) -> std::process::Output {
    let output = Command::new("bash").arg(testbed()).args(args).stdin(Stdio::null()).output().expect("run testbed");
    assert!(output.status.success(), "testbed {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// The last non-OSTree test host (the features suite leases from the first).
fn test_host() -> String {
    if let Ok(host) = std::env::var("COMMCTL_TEST_HOST") {
        return host;
    }
    let ostree = std::env::var("COMMISSAIRE_TEST_OSTREE_HOSTS").unwrap_or_default();
    let hosts = std::env::var("COMMISSAIRE_TEST_HOSTS")
        .expect("COMMISSAIRE_TEST_HOSTS is not set: start the test bed with --hosts");
    hosts
        .split_whitespace()
        .rfind(|h| !ostree.split_whitespace().any(|o| o == *h))
        .expect("no non-OSTree test host")
        .to_string()
}

/// The parts of a MIME document as Python's email package (which cloud-init
/// uses) reads them: `[(content type, filename, decoded text)]`, in order.
fn mime_parts(document: &Path) -> Vec<(String, String, String)> {
    let script = r#"
import email, json, sys
msg = email.message_from_binary_file(open(sys.argv[1], 'rb'))
assert msg.is_multipart(), 'not multipart'
parts = [(p.get_content_type(), p.get_filename(), p.get_payload(decode=True).decode())
         for p in msg.walk() if not p.is_multipart()]
print(json.dumps(parts))
"#;
    let output = Command::new("python3").arg("-c").arg(script).arg(document).output().expect("python3");
    assert!(output.status.success(), "python3: {}", String::from_utf8_lossy(&output.stderr));
    let parts: Vec<(String, String, String)> = serde_json::from_slice(&output.stdout).expect("JSON");
    parts
}

fn host_json(config: &Path, address: &str) -> Option<Value> {
    let run = run(config, &["host", "get", address, "-o", "json"]);
    if run.code != 0 {
        return None;
    }
    serde_json::from_str(&run.stdout).ok()
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().expect("tmux")
}

fn pane(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session, "-S", "-200"]).stdout).into_owned()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The private directories commctl made under `tmp` (key files live there).
fn key_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn user_data_registers_a_test_host_then_host_ssh_logs_in() {
    let address = test_host();
    testbed_cmd(&["host-reset", &address]);
    let dir = tempfile::tempdir().expect("tempdir");
    let password = "first-boot-password";
    users_file(dir.path(), "registrar", password);
    let mut server = Server::start(dir.path(), true);
    let config = dir.path().join("commissaire.json");
    write_config(&config, server.port, "registrar", password);
    server.wait_ready(&config);
    for args in
        [&["container_manager", "create", "-t", "trivial", "local"][..], &["cluster", "create", "-c", "local", "fleet"]]
    {
        let r = run(&config, args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
    }

    // The user-data, as an operator makes it.
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("write");
    let operator_key = dir.path().join("operator");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator@desk", "-f"])
        .arg(&operator_key)
        .status();
    assert!(keygen.expect("ssh-keygen").success());
    let user_data = dir.path().join("fleet.userdata");
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let made = Command::new(commctl())
        .args(["user-data", "-e", &endpoint, "-c", "fleet", "-u", "registrar", "--password-file"])
        .arg(&password_file)
        .arg("-k")
        .arg(operator_key.with_extension("pub"))
        .args(["--source-address", &address, "-O"])
        .arg(&user_data)
        .output()
        .expect("user-data");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&user_data).expect("file").permissions().mode() & 0o777, 0o600);

    // Read as cloud-init reads it: cloud-config first, then the shell script.
    let parts = mime_parts(&user_data);
    let types: Vec<&str> = parts.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, ["text/cloud-config", "text/x-shellscript"]);
    let operator_public = std::fs::read_to_string(operator_key.with_extension("pub")).expect("pub");
    assert!(parts[0].2.contains(operator_public.trim()), "{}", parts[0].2);
    let (_, filename, script) = &parts[1];

    // cloud-init's scripts_user: the part written under the instance's scripts directory, run once as root.
    let target = format!("/var/lib/cloud/instance/scripts/{filename}");
    let mut install = Command::new("bash")
        .arg(testbed())
        .args([
            "host-exec",
            &address,
            "--",
            "sh",
            "-c",
            &format!("mkdir -p /var/lib/cloud/instance/scripts && cat > {target} && chmod 0700 {target}"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("host-exec");
    std::io::Write::write_all(install.stdin.as_mut().expect("stdin"), script.as_bytes()).expect("write script");
    drop(install.stdin.take());
    assert!(install.wait().expect("host-exec").success());
    let first_boot = testbed_cmd(&["host-exec", &address, "--", &target]);
    let said = String::from_utf8_lossy(&first_boot.stderr);
    assert!(said.contains("registered with"), "{said}");

    // The host appears and is bootstrapped into the cluster.
    let mut last = None;
    wait_for(&format!("{address} active"), || {
        last = host_json(&config, &address);
        last.as_ref().and_then(|h| h.get("status")).and_then(Value::as_str) == Some("active")
    });
    let host = last.expect("host");
    assert!(host["ssh_host_key"].as_str().is_some_and(|k| k.starts_with("ssh-")), "{host}");
    let cluster = run(&config, &["cluster", "get", "fleet", "-o", "json"]);
    let cluster: Value = serde_json::from_str(&cluster.stdout).expect("JSON");
    assert_eq!(cluster["hostset"], json!([address]));
    let creds = run(&config, &["host", "creds", &address, "-o", "json"]);
    assert!(creds.stdout.contains("--show-key prints it"), "the key is not shown without --show-key: {creds:?}");
    // The operator's public key went to cloud-config, the machine's own key is authorized on it.
    let authorized = testbed_cmd(&["host-exec", &address, "--", "cat", "/root/.ssh/authorized_keys"]);
    assert!(String::from_utf8_lossy(&authorized.stdout).contains("commissaire@"));

    // host ssh, non-interactive: a command after `--`; the key only while ssh runs.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let ran = run_with(
        &config,
        &["host", "ssh", &address, "--", "cat", "/proc/sys/kernel/random/boot_id"],
        &[("TMPDIR", &tmp)],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.trim().len(), 36, "{ran:?}");
    assert!(key_dirs(&tmp).is_empty(), "left behind: {:?}", key_dirs(&tmp));
    let failed = run_with(&config, &["host", "ssh", &address, "--", "exit", "7"], &[("TMPDIR", &tmp)]);
    assert_eq!(failed.code, 7, "ssh's exit status: {failed:?}");
    assert!(key_dirs(&tmp).is_empty());

    // SIGTERM during a session: passed to ssh, the key removed.
    let mut session = Command::new(commctl())
        .arg("--config")
        .arg(&config)
        .args(["host", "ssh", &address, "--", "sleep", "60"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .spawn()
        .expect("commctl host ssh");
    wait_for("the session's key file", || key_dirs(&tmp).iter().any(|d| d.join("key").is_file()));
    let key = key_dirs(&tmp)[0].join("key");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(key.parent().expect("dir")).expect("dir").permissions().mode() & 0o777, 0o700);
    let _ = Command::new("kill").args(["-TERM", &session.id().to_string()]).status();
    let status = session.wait().expect("wait");
    assert!(!status.success(), "ssh was ended by the signal");
    assert!(key_dirs(&tmp).is_empty(), "left behind after SIGTERM: {:?}", key_dirs(&tmp));

    // Interactive, in a terminal: log in, run a command, exit.
    let name = format!("commctl-ssh-{}", std::process::id());
    let command =
        format!("TMPDIR={} {} --config {} host ssh {address}", tmp.display(), commctl().display(), config.display());
    let started = tmux(&["new-session", "-d", "-s", &name, "-x", "160", "-y", "40", &command]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    wait_for("a shell prompt", || pane(&name).trim_end().ends_with('#'));
    assert!(key_dirs(&tmp).iter().any(|d| d.join("key").is_file()), "the key exists during the session");
    tmux(&["send-keys", "-t", &name, "echo logged-in-as-$(id -un)-on-$(cat /etc/machine-id | cut -c1-8)", "Enter"]);
    let machine_id = testbed_cmd(&["host-exec", &address, "--", "cat", "/etc/machine-id"]);
    let expected = format!("logged-in-as-root-on-{}", &String::from_utf8_lossy(&machine_id.stdout)[..8]);
    wait_for(&format!("{expected} in the pane"), || pane(&name).contains(&expected));
    tmux(&["send-keys", "-t", &name, "exit", "Enter"]);
    wait_for("the session to end", || !tmux(&["has-session", "-t", &name]).status.success());
    assert!(key_dirs(&tmp).is_empty(), "left behind after exit: {:?}", key_dirs(&tmp));
}

/// Debian's cloud-init 22.4 itself, on a test host, with the user-data as the
/// NoCloud seed: its `ssh` module installs the operator's key from the
/// cloud-config part, its `scripts_user` module runs the registration script,
/// and the host ends `active` in its cluster. cloud-init is not installed on
/// the machine: its packages are extracted once into the test bed's state
/// dir (`tests/cloud-init/prepare.sh`, apt-get download + dpkg -x). Uses the
/// second-last non-OSTree test host (or `COMMCTL_CLOUD_INIT_HOST`).
#[test]
fn cloud_init_itself_runs_the_user_data() {
    let address = std::env::var("COMMCTL_CLOUD_INIT_HOST").unwrap_or_else(|_| {
        let ostree = std::env::var("COMMISSAIRE_TEST_OSTREE_HOSTS").unwrap_or_default();
        let hosts = std::env::var("COMMISSAIRE_TEST_HOSTS").expect("COMMISSAIRE_TEST_HOSTS is not set");
        let plain: Vec<&str> =
            hosts.split_whitespace().filter(|h| !ostree.split_whitespace().any(|o| o == *h)).collect();
        assert!(plain.len() >= 2, "needs two non-OSTree test hosts");
        plain[plain.len() - 2].to_string()
    });
    let state = std::env::var("COMMISSAIRE_TESTBED_DIR").unwrap_or_else(|_| "/tmp/commissaire-testbed".into());
    let cloud_init = Path::new(&state).join("cloud-init");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloud-init");
    let prepared = Command::new("sh").arg(here.join("prepare.sh")).arg(&cloud_init).status().expect("prepare.sh");
    assert!(prepared.success(), "extracting cloud-init into {} failed", cloud_init.display());
    testbed_cmd(&["host-reset", &address]);

    let dir = tempfile::tempdir().expect("tempdir");
    users_file(dir.path(), "registrar", "cloud-init-password");
    let mut server = Server::start(dir.path(), true);
    let config = dir.path().join("commissaire.json");
    write_config(&config, server.port, "registrar", "cloud-init-password");
    server.wait_ready(&config);
    for args in [
        &["container_manager", "create", "-t", "trivial", "local"][..],
        &["cluster", "create", "-c", "local", "cloudy"],
    ] {
        let r = run(&config, args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
    }
    let operator_key = dir.path().join("operator");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator@cloud", "-f"])
        .arg(&operator_key)
        .status();
    assert!(keygen.expect("ssh-keygen").success());
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "cloud-init-password").expect("write");
    // Under the test bed's dir (in /tmp, which the hosts share), readable by the host's root.
    let user_data = cloud_init.join(format!("user-data-{}", std::process::id()));
    let made = Command::new(commctl())
        .args(["user-data", "-e", &format!("http://127.0.0.1:{}", server.port), "-c", "cloudy", "-u", "registrar"])
        .arg("--password-file")
        .arg(&password_file)
        .arg("-k")
        .arg(operator_key.with_extension("pub"))
        .args(["--source-address", &address, "-O"])
        .arg(&user_data)
        .output()
        .expect("user-data");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let ran = Command::new("bash")
        .arg(testbed())
        .args(["host-exec", &address, "--", "sh"])
        .arg(here.join("run.sh"))
        .arg(&cloud_init)
        .arg(&user_data)
        .output()
        .expect("host-exec");
    let _ = std::fs::remove_file(&user_data);
    let log = format!("{}{}", String::from_utf8_lossy(&ran.stdout), String::from_utf8_lossy(&ran.stderr));
    assert!(ran.status.success(), "cloud-init failed:\n{log}");
    assert!(log.contains("config-scripts-user ran successfully"), "{log}");
    assert!(log.contains("registered with"), "{log}");

    wait_for(&format!("{address} active"), || {
        host_json(&config, &address).and_then(|h| h.get("status").cloned()) == Some(json!("active"))
    });
    let authorized = testbed_cmd(&["host-exec", &address, "--", "cat", "/root/.ssh/authorized_keys"]);
    let authorized = String::from_utf8_lossy(&authorized.stdout);
    assert!(authorized.contains("operator@cloud"), "cloud-config's key installed by cloud-init: {authorized}");
    assert!(authorized.contains("commissaire@"), "the machine's own key authorized by the script: {authorized}");
    let members = run(&config, &["host", "list", "cloudy"]);
    assert!(members.stdout.contains(&address), "{members:?}");
}

/// HTTPS with `ca_file`, a kubeconfig's token (the server's `bearertokens`
/// plugin), and the password asked for on the terminal when the
/// configuration has none.
#[test]
fn https_kubeconfig_token_and_password_prompt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A CA, and a certificate for 127.0.0.1 it signed.
    let (ca, cert, key) = (d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"));
    let script = format!(
        "set -e; cd {dir}
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=test-ca \
             -keyout ca-key.pem -out ca.pem
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=commissaire -keyout key.pem -out req.pem
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
         openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile ext.cnf -out cert.pem",
        dir = d.display()
    );
    let made = Command::new("sh").arg("-c").arg(script).output().expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let token = "kube-token-for-commctl";
    let digest = Command::new("sh").arg("-c").arg(format!("printf %s {token} | sha256sum | cut -d' ' -f1")).output();
    let digest = String::from_utf8(digest.expect("sha256sum").stdout).expect("hex").trim().to_string();
    std::fs::write(
        d.join("tokens.json"),
        json!({"kube-user": {"token_sha256": digest, "role": "read-write"}}).to_string(),
    )
    .expect("tokens");
    users_file(d, "operator", "typed-at-the-prompt");
    let extra: Vec<String> = vec![
        "--tls-pemfile".into(),
        cert.display().to_string(),
        "--tls-keyfile".into(),
        key.display().to_string(),
        "--authentication-plugin".into(),
        format!("bearertokens:filepath={}", d.join("tokens.json").display()),
    ];
    let mut server = Server::start_with(d, false, &extra);
    let kubeconfig = d.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\n\
         users:\n- name: u\n  user: {token: kube-token-for-commctl}\n",
    )
    .expect("kubeconfig");
    let endpoint = format!("https://127.0.0.1:{}", server.port);
    let with_token = d.join("token.json");
    std::fs::write(&with_token, json!({"endpoint": endpoint, "kubeconfig": kubeconfig, "ca_file": ca}).to_string())
        .expect("config");
    server.wait_ready(&with_token);
    let created = run(&with_token, &["cluster", "create", "over-tls"]);
    assert_eq!(created.code, 0, "{created:?}");

    // Without the CA, the certificate is refused: no server reached, exit 1.
    let no_ca = d.join("no-ca.json");
    std::fs::write(&no_ca, json!({"endpoint": endpoint, "kubeconfig": kubeconfig}).to_string()).expect("config");
    let refused = run(&no_ca, &["cluster", "list"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("TLS") && refused.stderr.contains("no server could be reached"), "{refused:?}");

    // No password in the file: asked for on the terminal (in tmux), not echoed.
    let prompting = d.join("prompt.json");
    std::fs::write(&prompting, json!({"endpoint": endpoint, "username": "operator", "ca_file": ca}).to_string())
        .expect("config");
    let name = format!("commctl-prompt-{}", std::process::id());
    let command = format!("{} --config {} cluster list; sleep 30", commctl().display(), prompting.display());
    let started = tmux(&["new-session", "-d", "-s", &name, "-x", "120", "-y", "20", &command]);
    assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
    wait_for("the password prompt", || pane(&name).contains("Password:"));
    tmux(&["send-keys", "-t", &name, "typed-at-the-prompt", "Enter"]);
    wait_for("the cluster list", || pane(&name).contains("over-tls"));
    assert!(!pane(&name).contains("typed-at-the-prompt"), "the password was echoed: {}", pane(&name));
    tmux(&["kill-session", "-t", &name]);
}
