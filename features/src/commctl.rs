//! Running the `commctl` binary against a stack, as an operator would: a
//! configuration file naming the stack's endpoint(s) and user, standard input
//! closed (so commctl never prompts), a deadline.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};

/// How long one commctl run may take (a rolling restart followed with `--watch`).
pub const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// The commctl binary.
#[derive(Debug, Clone)]
pub struct Commctl {
    pub binary: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// For messages.
    pub fn describe(&self) -> String {
        format!(
            "commctl {} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Commctl {
    /// `commctl` next to the test executable, refused when older than its sources.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot tell where the test executable is")?;
        let dirs: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(Path::to_path_buf).collect();
        let binary = dirs.iter().map(|d| d.join("commctl")).find(|p| p.is_file()).with_context(|| {
            format!(
                "commctl was not found in {}: build it first with `cargo build --workspace --bins`",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
            )
        })?;
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../commctl/src");
        let built = std::fs::metadata(&binary).and_then(|m| m.modified())?;
        for entry in std::fs::read_dir(&sources).with_context(|| format!("reading {}", sources.display()))? {
            let path = entry?.path();
            if std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t > built) {
                bail!(
                    "{} is older than {}: rebuild it with `cargo build --workspace --bins`",
                    binary.display(),
                    path.display()
                );
            }
        }
        Ok(Self { binary })
    }

    /// Writes a configuration file.
    pub fn write_config(path: &Path, endpoints: &[String], username: &str, password: &str) -> anyhow::Result<()> {
        let config = serde_json::json!({"endpoint": endpoints, "username": username, "password": password});
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// Runs `commctl --config CONFIG ARGS…` to its end.
    pub async fn run(&self, config: &Path, args: &[String]) -> anyhow::Result<Output> {
        let child = tokio::process::Command::new(&self.binary)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let output = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
            .await
            .with_context(|| format!("commctl {} did not end within {RUN_DEADLINE:?}", args.join(" ")))??;
        Ok(Output {
            args: args.to_vec(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
