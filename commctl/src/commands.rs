//! What each command does: requests, and what is printed.

use std::{
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
};

use base64::Engine;
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use crate::{
    cli::{
        ClusterCmd, Command, ContainerManagerCmd, DeployCmd, HostCmd, Knobs, NetworkCmd, OperationCmd, PasshashArgs,
        UserDataArgs,
    },
    client::Client,
    config::{self, Auth, Config},
    error::{Error, Result},
    output::{self, Format},
    progress::OpKind,
    userdata::UserData,
};

/// What every command shares: the output format and, made on first use,
/// the client (commands that talk to no server never read the configuration).
#[derive(Debug)]
pub struct Ctx {
    pub format: Format,
    pub config_flag: Option<PathBuf>,
    client: OnceCell<Client>,
}

/// Columns of the host table.
pub const HOST_COLUMNS: &[&str] = &["address", "status", "os", "cpus", "memory", "space", "last_check", "reason"];

impl Ctx {
    pub fn new(format: Format, config_flag: Option<PathBuf>) -> Self {
        Self { format, config_flag, client: OnceCell::new() }
    }

    /// The client for the configured endpoints and credentials.
    pub async fn client(&self) -> Result<&Client> {
        self.client.get_or_try_init(|| async { Client::new(&load_config(self.config_flag.as_deref())?) }).await
    }

    /// Prints a value in the chosen format (tables with `columns` for lists of objects).
    pub fn emit(&self, value: &Value, columns: Option<&[&str]>) {
        let text = match self.format {
            Format::Table => output::table(value, columns),
            other => output::render(value, other),
        };
        if !text.is_empty() {
            crate::outln!("{text}");
        }
    }

    /// An operation record: in a table, without its internal `progress`
    /// (the per-host state the cluster exec service resumes from; shown by
    /// `-o json|yaml`).
    pub fn emit_record(&self, value: &Value) {
        match (self.format, value) {
            (Format::Table, Value::Object(map)) => {
                let mut shown = map.clone();
                shown.remove("progress");
                self.emit(&Value::Object(shown), None);
            }
            _ => self.emit(value, None),
        }
    }

    /// A confirmation for people; the value itself for JSON and YAML.
    fn done(&self, message: &str, value: &Value) {
        match self.format {
            Format::Table => crate::outln!("{message}"),
            _ => self.emit(value, None),
        }
    }
}

fn prompt_line(label: &str) -> Result<String> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Error::usage(format!("cannot read {label}: {e}")))?;
    Ok(line.trim().to_string())
}

fn prompt_password(label: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(format!(
            "no password configured and standard input is not a terminal to ask for one ({label})"
        )));
    }
    rpassword::prompt_password(label).map_err(|e| Error::usage(format!("cannot read the password: {e}")))
}

/// The configuration: the file, then the terminal for what is missing.
pub fn load_config(flag: Option<&Path>) -> Result<Config> {
    let file = match config::config_path(flag) {
        Some((path, explicit)) => config::read_config_file(&path, explicit)?,
        None => config::ConfigFile::default(),
    };
    let interactive = std::io::stdin().is_terminal();
    let mut endpoints = file.endpoint.map(config::Endpoints::into_vec).unwrap_or_default();
    if endpoints.is_empty() {
        if !interactive {
            return Err(Error::usage(
                "no endpoint configured: put \"endpoint\" in ~/.commissaire.json (or the file given with --config)",
            ));
        }
        endpoints.push(prompt_line("Endpoint: ")?);
    }
    let auth = if let Some(kubeconfig) = &file.kubeconfig {
        config::kubeconfig_auth(kubeconfig)?
    } else {
        let username = match file.username {
            Some(u) => Some(u),
            None if interactive => Some(prompt_line("Username: ")?).filter(|u| !u.is_empty()),
            None => None,
        };
        match username {
            Some(username) => {
                let password = match file.password {
                    Some(p) => p,
                    None => prompt_password("Password: ")?,
                };
                Auth::Basic { username, password }
            }
            None => Auth::None,
        }
    };
    Ok(Config { endpoints: config::normalise_endpoints(endpoints), auth, ca_file: file.ca_file })
}

/// A record name as the server accepts it in a path.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(Error::usage(format!("{what} {name:?}: only letters, digits, '-' and '_' are allowed")));
    }
    Ok(())
}

/// A host address as the server accepts it in a path.
pub fn check_address(address: &str) -> Result<()> {
    if address.is_empty() || !address.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(Error::usage(format!(
            "host address {address:?}: only letters, digits, '-', '_' and '.' are allowed"
        )));
    }
    Ok(())
}

/// An address given on the command line: an IP address as is, a name resolved
/// to its first IPv4 address (as the original did).
pub fn resolve_address(arg: &str) -> Result<String> {
    if arg.parse::<std::net::IpAddr>().is_ok() {
        return Ok(arg.to_string());
    }
    check_address(arg)?;
    use std::net::ToSocketAddrs;
    let addresses = (arg, 22).to_socket_addrs().map_err(|e| Error::usage(format!("{arg}: {e}")))?;
    addresses
        .map(|a| a.ip())
        .find(std::net::IpAddr::is_ipv4)
        .map(|ip| ip.to_string())
        .ok_or_else(|| Error::usage(format!("{arg}: no IPv4 address")))
}

/// `-O/--options` values merged into one object: `KEY=VALUE` (`true`/`false`
/// become booleans) or a JSON object; the last wins.
pub fn merge_options(values: &[String]) -> Result<Map<String, Value>> {
    let mut merged = Map::new();
    for value in values {
        let trimmed = value.trim();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            match serde_json::from_str::<Value>(trimmed) {
                Ok(Value::Object(map)) => merged.extend(map),
                Ok(_) => return Err(Error::usage(format!("option {value:?} is not a JSON object"))),
                Err(e) => return Err(Error::usage(format!("option {value:?} is not valid JSON: {e}"))),
            }
        } else if let Some((key, val)) = value.split_once('=') {
            let key = key.trim();
            if key.is_empty() {
                return Err(Error::usage(format!("option {value:?} has no key")));
            }
            let val = match val {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                other => Value::String(other.to_string()),
            };
            merged.insert(key.to_string(), val);
        } else {
            return Err(Error::usage(format!("option {value:?}: expected KEY=VALUE or a JSON object")));
        }
    }
    Ok(merged)
}

/// The knobs as the PUT body of an operation.
pub fn knobs_body(knobs: &Knobs) -> Map<String, Value> {
    let mut body = Map::new();
    if let Some(batch) = &knobs.batch {
        let value = batch.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::String(batch.clone()));
        body.insert("batch".into(), value);
    }
    for (name, value) in [
        ("failure_budget", knobs.failure_budget),
        ("soak_seconds", knobs.soak_seconds),
        ("host_timeout_seconds", knobs.host_timeout_seconds),
    ] {
        if let Some(v) = value {
            body.insert(name.into(), Value::from(v));
        }
    }
    if knobs.health_gate {
        body.insert("health_gate".into(), Value::Bool(true));
    }
    body
}

/// Runs a command; the process's exit status on success.
pub async fn run(ctx: &Ctx, command: Command) -> Result<u8> {
    match command {
        Command::Cluster(cmd) => cluster(ctx, cmd).await.map(|()| 0),
        Command::ContainerManager(cmd) => container_manager(ctx, cmd).await.map(|()| 0),
        Command::Host(cmd) => host(ctx, cmd).await,
        Command::Network(cmd) => network(ctx, cmd).await.map(|()| 0),
        Command::Passhash(args) => passhash(&args).map(|()| 0),
        Command::UserData(args) => user_data(&args).map(|()| 0),
        Command::Completions { .. } | Command::Man { .. } => {
            Err(Error::Local("completions and man are handled by the binary".into()))
        }
    }
}

/// Deletes each path; reports each; fails if any failed.
async fn delete_each(ctx: &Ctx, what: &str, paths: Vec<(String, String)>) -> Result<()> {
    let client = ctx.client().await?;
    let mut deleted = Vec::new();
    let mut failures = 0;
    for (name, path) in paths {
        match client.delete(&path).await {
            Ok(_) => {
                if ctx.format == Format::Table {
                    crate::outln!("Deleted {what} {name}");
                }
                deleted.push(Value::String(name));
            }
            Err(err @ (Error::Unreachable { .. } | Error::Transport(_))) => return Err(err),
            Err(err) => {
                eprintln!("commctl: error: {what} {name}: {err}");
                failures += 1;
            }
        }
    }
    if ctx.format != Format::Table {
        ctx.emit(&Value::Array(deleted), None);
    }
    if failures > 0 {
        return Err(Error::Server { status: 0, message: format!("{failures} of the {what}s could not be deleted") });
    }
    Ok(())
}

async fn cluster(ctx: &Ctx, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Create { name, r#type: _, network, container_manager } => {
            check_name("cluster", &name)?;
            let mut body = Map::new();
            body.insert("network".into(), Value::String(network));
            if let Some(cm) = container_manager.filter(|c| !c.is_empty()) {
                body.insert("container_manager".into(), Value::String(cm));
            }
            let client = ctx.client().await?;
            let value = client.put(&format!("/api/v0/cluster/{name}"), Some(&Value::Object(body))).await?;
            ctx.emit(&value, None);
        }
        ClusterCmd::Delete { names } => {
            for name in &names {
                check_name("cluster", name)?;
            }
            let paths = names.into_iter().map(|n| (n.clone(), format!("/api/v0/cluster/{n}"))).collect();
            delete_each(ctx, "cluster", paths).await?;
        }
        ClusterCmd::Get { name } => {
            check_name("cluster", &name)?;
            let value = ctx.client().await?.get(&format!("/api/v0/cluster/{name}")).await?;
            ctx.emit(&value, None);
        }
        ClusterCmd::List => {
            let value = ctx.client().await?.get("/api/v0/clusters").await?;
            ctx.emit(&value, None);
        }
        ClusterCmd::Restart(op) => operation(ctx, OpKind::Restart, op).await?,
        ClusterCmd::Upgrade(op) => operation(ctx, OpKind::Upgrade, op).await?,
        ClusterCmd::Deploy(cmd) => {
            let op = match cmd {
                DeployCmd::Start { name, deploy_version: version, knobs, watch } => {
                    if version.trim().is_empty() {
                        return Err(Error::usage("the version to deploy is empty"));
                    }
                    let mut body = knobs_body(&knobs);
                    body.insert("version".into(), Value::String(version));
                    return start_operation(ctx, OpKind::Deploy, &name, body, watch).await;
                }
                DeployCmd::Status { name, watch } => OperationCmd::Status { name, watch },
                DeployCmd::Pause { name } => OperationCmd::Pause { name },
                DeployCmd::Resume { name } => OperationCmd::Resume { name },
                DeployCmd::Abort { name } => OperationCmd::Abort { name },
                DeployCmd::RetryFailed { name, watch } => OperationCmd::RetryFailed { name, watch },
            };
            operation(ctx, OpKind::Deploy, op).await?;
        }
    }
    Ok(())
}

async fn start_operation(ctx: &Ctx, kind: OpKind, name: &str, body: Map<String, Value>, watch: bool) -> Result<()> {
    check_name("cluster", name)?;
    let client = ctx.client().await?;
    let body = if body.is_empty() { None } else { Some(Value::Object(body)) };
    let record = client.put(&format!("/api/v0/cluster/{name}/{}", kind.name()), body.as_ref()).await?;
    if watch {
        return crate::watch::watch(ctx, kind, name).await;
    }
    ctx.emit_record(&record);
    Ok(())
}

async fn operation(ctx: &Ctx, kind: OpKind, cmd: OperationCmd) -> Result<()> {
    let op = kind.name();
    match cmd {
        OperationCmd::Start { name, knobs, watch } => {
            start_operation(ctx, kind, &name, knobs_body(&knobs), watch).await
        }
        OperationCmd::Status { name, watch } => {
            check_name("cluster", &name)?;
            if watch {
                return crate::watch::watch(ctx, kind, &name).await;
            }
            let value = ctx.client().await?.get(&format!("/api/v0/cluster/{name}/{op}")).await?;
            ctx.emit_record(&value);
            Ok(())
        }
        OperationCmd::Pause { name } => control(ctx, kind, &name, "pause").await,
        OperationCmd::Resume { name } => control(ctx, kind, &name, "resume").await,
        OperationCmd::Abort { name } => control(ctx, kind, &name, "abort").await,
        OperationCmd::RetryFailed { name, watch } => {
            check_name("cluster", &name)?;
            let record = ctx.client().await?.put(&format!("/api/v0/cluster/{name}/{op}/retry-failed"), None).await?;
            if watch {
                return crate::watch::watch(ctx, kind, &name).await;
            }
            ctx.emit_record(&record);
            Ok(())
        }
    }
}

/// `PUT …/{operation}/{pause|resume|abort}`: the record with the control set.
async fn control(ctx: &Ctx, kind: OpKind, name: &str, verb: &str) -> Result<()> {
    check_name("cluster", name)?;
    let record = ctx.client().await?.put(&format!("/api/v0/cluster/{name}/{}/{verb}", kind.name()), None).await?;
    ctx.emit_record(&record);
    Ok(())
}

async fn host(ctx: &Ctx, cmd: HostCmd) -> Result<u8> {
    match cmd {
        HostCmd::Create { address, ssh_priv_key, cluster, remote_user } => {
            let address = resolve_address(&address)?;
            if let Some(c) = &cluster {
                check_name("cluster", c)?;
            }
            let key = read_input(&ssh_priv_key)?;
            if key.is_empty() {
                return Err(Error::usage(format!("the key file {} is empty", ssh_priv_key.display())));
            }
            let mut body = Map::new();
            body.insert("ssh_priv_key".into(), Value::String(base64::engine::general_purpose::STANDARD.encode(&key)));
            body.insert("remote_user".into(), Value::String(remote_user));
            if let Some(c) = cluster {
                body.insert("cluster".into(), Value::String(c));
            }
            let value = ctx.client().await?.put(&format!("/api/v0/host/{address}"), Some(&Value::Object(body))).await?;
            ctx.emit(&value, None);
        }
        HostCmd::Delete { addresses } => {
            for a in &addresses {
                check_address(a)?;
            }
            let paths = addresses.into_iter().map(|a| (a.clone(), format!("/api/v0/host/{a}"))).collect();
            delete_each(ctx, "host", paths).await?;
        }
        HostCmd::Get { address } => {
            check_address(&address)?;
            let value = ctx.client().await?.get(&format!("/api/v0/host/{address}")).await?;
            ctx.emit(&value, None);
        }
        HostCmd::List { cluster } => {
            let client = ctx.client().await?;
            let mut hosts = client.get("/api/v0/hosts").await?;
            if let Some(cluster) = cluster {
                check_name("cluster", &cluster)?;
                let members = client.get(&format!("/api/v0/cluster/{cluster}/hosts")).await?;
                let members: Vec<&str> = members.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                if let Value::Array(list) = &mut hosts {
                    list.retain(|h| h.get("address").and_then(Value::as_str).is_some_and(|a| members.contains(&a)));
                }
            }
            ctx.emit(&hosts, Some(HOST_COLUMNS));
        }
        HostCmd::Status { address } => {
            check_address(&address)?;
            let value = ctx.client().await?.get(&format!("/api/v0/host/{address}/status")).await?;
            ctx.emit(&value, None);
        }
        HostCmd::Creds { address, show_key } => {
            check_address(&address)?;
            let mut value = ctx.client().await?.get(&format!("/api/v0/host/{address}/creds")).await?;
            if !show_key && let Some(key) = value.get_mut("ssh_priv_key") {
                let len = key.as_str().map(str::len).unwrap_or(0);
                *key = Value::String(if len == 0 {
                    String::new()
                } else {
                    format!("<{len} characters; --show-key prints it>")
                });
            }
            ctx.emit(&value, None);
        }
        HostCmd::Ssh { host, ssh_args, command } => {
            check_address(&host)?;
            return crate::ssh::host_ssh(ctx.client().await?, &host, &ssh_args, &command).await;
        }
        HostCmd::Join { address, cluster } => {
            check_address(&address)?;
            check_name("cluster", &cluster)?;
            let value = ctx.client().await?.put(&format!("/api/v0/cluster/{cluster}/hosts/{address}"), None).await?;
            ctx.done(&format!("Host {address} joined cluster {cluster}"), &value);
        }
        HostCmd::Unjoin { address, cluster } => {
            check_address(&address)?;
            check_name("cluster", &cluster)?;
            let value = ctx.client().await?.delete(&format!("/api/v0/cluster/{cluster}/hosts/{address}")).await?;
            ctx.done(&format!("Host {address} left cluster {cluster}"), &value);
        }
    }
    Ok(0)
}

/// Network and container manager commands are alike.
async fn named_resource(ctx: &Ctx, what: &str, item: &str, list: &str, action: ResourceAction) -> Result<()> {
    match action {
        ResourceAction::Create { name, kind, options } => {
            check_name(what, &name)?;
            let body = json!({"type": kind, "options": merge_options(&options)?});
            let value = ctx.client().await?.put(&format!("/api/v0/{item}/{name}"), Some(&body)).await?;
            ctx.emit(&value, None);
        }
        ResourceAction::Delete(names) => {
            for name in &names {
                check_name(what, name)?;
            }
            let paths = names.into_iter().map(|n| (n.clone(), format!("/api/v0/{item}/{n}"))).collect();
            delete_each(ctx, what, paths).await?;
        }
        ResourceAction::Get(name) => {
            check_name(what, &name)?;
            let value = ctx.client().await?.get(&format!("/api/v0/{item}/{name}")).await?;
            ctx.emit(&value, None);
        }
        ResourceAction::List => {
            let value = ctx.client().await?.get(&format!("/api/v0/{list}")).await?;
            ctx.emit(&value, None);
        }
    }
    Ok(())
}

enum ResourceAction {
    Create { name: String, kind: String, options: Vec<String> },
    Delete(Vec<String>),
    Get(String),
    List,
}

async fn network(ctx: &Ctx, cmd: NetworkCmd) -> Result<()> {
    let action = match cmd {
        NetworkCmd::Create { name, r#type, options } => ResourceAction::Create { name, kind: r#type, options },
        NetworkCmd::Delete { names } => ResourceAction::Delete(names),
        NetworkCmd::Get { name } => ResourceAction::Get(name),
        NetworkCmd::List => ResourceAction::List,
    };
    named_resource(ctx, "network", "network", "networks", action).await
}

async fn container_manager(ctx: &Ctx, cmd: ContainerManagerCmd) -> Result<()> {
    let action = match cmd {
        ContainerManagerCmd::Create { name, r#type, options } => ResourceAction::Create { name, kind: r#type, options },
        ContainerManagerCmd::Delete { names } => ResourceAction::Delete(names),
        ContainerManagerCmd::Get { name } => ResourceAction::Get(name),
        ContainerManagerCmd::List => ResourceAction::List,
    };
    named_resource(ctx, "container manager", "containermanager", "containermanagers", action).await
}

/// A file's bytes, or standard input's for `-`.
fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::usage(format!("cannot read standard input: {e}")))?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))
}

/// A password read from a file: its content without one trailing line end.
pub fn password_from_file_content(bytes: Vec<u8>) -> Result<String> {
    let mut text = String::from_utf8(bytes).map_err(|_| Error::usage("the password file is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn passhash(args: &PasshashArgs) -> Result<()> {
    let password = match (&args.password, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => password_from_file_content(read_input(file)?)?,
        (None, None) => prompt_password("Password: ")?,
    };
    if password.is_empty() {
        return Err(Error::usage("the password is empty"));
    }
    let hash = bcrypt::hash(&password, args.rounds).map_err(|e| Error::Local(format!("bcrypt: {e}")))?;
    crate::outln!("{hash}");
    Ok(())
}

fn user_data(args: &UserDataArgs) -> Result<()> {
    crate::client::Endpoint::parse(&args.endpoint).map_err(|e| Error::usage(format!("--endpoint: {e}")))?;
    if let Some(c) = &args.cluster {
        check_name("cluster", c)?;
    }
    if let Some(a) = &args.address {
        check_address(a)?;
    }
    let password = if args.password {
        Some(prompt_password("Password for the new hosts' registration: ")?)
    } else if let Some(file) = &args.password_file {
        Some(password_from_file_content(read_input(file)?)?)
    } else {
        None
    };
    if password.is_some() && args.username.is_none() {
        return Err(Error::usage("a password needs --username"));
    }
    let read_text = |path: &Path| -> Result<String> {
        String::from_utf8(read_input(path)?).map_err(|_| Error::usage(format!("{} is not UTF-8 text", path.display())))
    };
    let mut authorized_keys = Vec::new();
    for path in &args.authorized_key {
        let text = read_text(path)?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if line.contains("PRIVATE KEY") {
                return Err(Error::usage(format!(
                    "{} is a private key; --authorized-key takes a public key",
                    path.display()
                )));
            }
            authorized_keys.push(line.to_string());
        }
    }
    let data = UserData {
        endpoint: args.endpoint.clone(),
        cluster: args.cluster.clone(),
        username: args.username.clone(),
        password,
        remote_user: args.remote_user.clone(),
        ssh_key_path: args.ssh_key_path.clone(),
        authorized_keys_path: args.authorized_keys_path.clone(),
        cloud_config: args.cloud_init.as_deref().map(read_text).transpose()?,
        authorized_keys,
        address: args.address.clone(),
        source_address: args.source_address.clone(),
        ca_pem: args.ca_file.as_deref().map(read_text).transpose()?,
    };
    let document = data.render();
    match &args.out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))?;
            file.write_all(document.as_bytes())
                .map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))?;
        }
        None => crate::out!("{document}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_merge_last_wins() {
        let merged = merge_options(&[
            r#"{"server_url": "https://a", "token": "x"}"#.into(),
            "token=y".into(),
            "insecure_skip_tls_verify=true".into(),
        ])
        .expect("valid");
        assert_eq!(
            Value::Object(merged),
            json!({"server_url": "https://a", "token": "y", "insecure_skip_tls_verify": true})
        );
        assert!(merge_options(&["[1]".into()]).is_err());
        assert_eq!(merge_options(&["{not json".into()]).expect_err("bad").exit_code(), 2);
        assert!(merge_options(&["novalue".into()]).is_err());
    }

    #[test]
    fn knobs_become_the_body() {
        let knobs =
            Knobs { batch: Some("50%".into()), failure_budget: Some(1), health_gate: true, ..Default::default() };
        assert_eq!(
            Value::Object(knobs_body(&knobs)),
            json!({"batch": "50%", "failure_budget": 1, "health_gate": true})
        );
        let knobs = Knobs { batch: Some("2".into()), ..Default::default() };
        assert_eq!(Value::Object(knobs_body(&knobs)), json!({"batch": 2}));
    }

    #[test]
    fn names_and_addresses_are_checked_before_any_request() {
        assert!(check_name("cluster", "prod-1_a").is_ok());
        assert_eq!(check_name("cluster", "a/b").expect_err("slash").exit_code(), 2);
        assert!(check_name("cluster", "").is_err());
        assert!(check_address("10.0.0.1").is_ok());
        assert!(check_address("h?x=1").is_err());
        assert_eq!(resolve_address("192.168.1.5").expect("ip"), "192.168.1.5");
        assert_eq!(resolve_address("localhost").expect("resolves"), "127.0.0.1");
    }

    #[test]
    fn a_password_file_loses_one_line_end() {
        assert_eq!(password_from_file_content(b"s3cret\n".to_vec()).expect("text"), "s3cret");
        assert_eq!(password_from_file_content(b"s3cret\r\n".to_vec()).expect("text"), "s3cret");
        assert_eq!(password_from_file_content(b" spaced \n\n".to_vec()).expect("text"), " spaced \n");
    }
}
