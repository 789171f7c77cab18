//! `commctl host ssh`: an interactive session with the credentials the
//! server holds.
//!
//! The key is decoded into a file of a fresh private directory (mode 0700,
//! the file 0600) that exists only while ssh runs: it is removed when ssh
//! exits, when starting ssh fails, and when commctl gets SIGINT, SIGTERM or
//! SIGHUP (passed on to ssh, whose end is then awaited). Only SIGKILL of
//! commctl itself can leave it behind. When the server has pinned the host's
//! SSH key, ssh accepts that key only (a known_hosts file of the same
//! directory, `StrictHostKeyChecking=yes`).

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path, process::Stdio};

use base64::Engine;
use serde_json::Value;

use crate::{
    client::Client,
    error::{Error, Result},
};

/// The ssh command line: `ssh -i KEY -l USER [host key options] ARGS… HOST [-- COMMAND…]`.
pub fn ssh_arguments(
    key: &Path,
    known_hosts: Option<&Path>,
    user: &str,
    host: &str,
    args: &[String],
    command: &[String],
) -> Vec<String> {
    let mut argv = vec!["-i".to_string(), key.display().to_string(), "-l".into(), user.into()];
    argv.extend(["-o".into(), "IdentitiesOnly=yes".into()]);
    if let Some(known_hosts) = known_hosts {
        argv.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("HostKeyAlias={host}"),
        ]);
    }
    argv.extend(args.iter().cloned());
    argv.push(host.to_string());
    argv.extend(command.iter().cloned());
    argv
}

/// Runs ssh; returns its exit status.
pub async fn host_ssh(client: &Client, host: &str, args: &[String], command: &[String]) -> Result<u8> {
    let creds = client.get(&format!("/api/v0/host/{host}/creds")).await?;
    let encoded = creds.get("ssh_priv_key").and_then(Value::as_str).unwrap_or_default();
    let user = creds.get("remote_user").and_then(Value::as_str).filter(|u| !u.is_empty()).unwrap_or("root");
    if encoded.is_empty() {
        return Err(Error::Server { status: 200, message: format!("the server holds no SSH key for {host}") });
    }
    let mut key = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| Error::Transport(format!("the server's key for {host} is not base64: {e}")))?;
    if !key.ends_with(b"\n") {
        key.push(b'\n');
    }
    let pinned = match client.get(&format!("/api/v0/host/{host}/hostkey")).await {
        Ok(v) => {
            v.get("ssh_host_key").and_then(Value::as_str).map(str::trim).filter(|k| !k.is_empty()).map(str::to_string)
        }
        Err(_) => None,
    };

    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o700);
    let dir = tempfile::Builder::new()
        .prefix("commctl-ssh-")
        .permissions(private.clone())
        .tempdir()
        .and_then(|dir| std::fs::set_permissions(dir.path(), private).map(|()| dir))
        .map_err(|e| Error::Local(format!("cannot make a private directory for the key: {e}")))?;
    let key_path = dir.path().join("key");
    let write = |path: &Path, bytes: &[u8]| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(bytes).map(|()| f))
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))?;
        file.flush().map_err(|e| Error::Local(e.to_string()))
    };
    write(&key_path, &key)?;
    drop(key);
    let known_hosts = match &pinned {
        Some(host_key) => {
            let path = dir.path().join("known_hosts");
            write(&path, format!("{host} {host_key}\n").as_bytes())?;
            Some(path)
        }
        None => None,
    };
    let argv = ssh_arguments(&key_path, known_hosts.as_deref(), user, host, args, command);
    let status = run_ssh(&argv).await;
    // The directory (key and known_hosts) goes now, whatever happened.
    let removed = dir.close();
    let status = status?;
    removed.map_err(|e| Error::Local(format!("could not remove the temporary key: {e}")))?;
    Ok(status)
}

async fn run_ssh(argv: &[String]) -> Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let program = std::env::var("COMMCTL_SSH").unwrap_or_else(|_| "ssh".into());
    let mut child = tokio::process::Command::new(&program)
        .args(argv)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Local(format!("cannot run {program}: {e}")))?;
    let signal_error = |e: std::io::Error| Error::Local(format!("cannot handle signals: {e}"));
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let forward = |child: &tokio::process::Child, sig: nix::sys::signal::Signal| {
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Error::Local(format!("waiting for ssh: {e}")))?;
                use std::os::unix::process::ExitStatusExt;
                let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
                return Ok(u8::try_from(code).unwrap_or(1));
            }
            _ = interrupt.recv() => forward(&child, nix::sys::signal::Signal::SIGINT),
            _ = terminate.recv() => forward(&child, nix::sys::signal::Signal::SIGTERM),
            _ = hangup.recv() => forward(&child, nix::sys::signal::Signal::SIGHUP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_before_the_host_and_a_command_after() {
        let args: Vec<String> = ["-v", "-p", "2222"].map(String::from).to_vec();
        let command: Vec<String> = ["uname", "-a"].map(String::from).to_vec();
        let argv = ssh_arguments(Path::new("/t/key"), Some(Path::new("/t/kh")), "root", "10.0.0.1", &args, &command);
        assert_eq!(
            argv.join(" "),
            "-i /t/key -l root -o IdentitiesOnly=yes -o UserKnownHostsFile=/t/kh -o StrictHostKeyChecking=yes \
             -o HostKeyAlias=10.0.0.1 -v -p 2222 10.0.0.1 uname -a"
        );
        let argv = ssh_arguments(Path::new("/t/key"), None, "core", "h", &[], &[]);
        assert_eq!(argv.join(" "), "-i /t/key -l core -o IdentitiesOnly=yes h");
    }
}
