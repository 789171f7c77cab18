//! Running a loaded [`Playbook`] on one host over the SSH transport.
//!
//! Every remote command is a [`Command`]: an argv whose every word is quoted, or a fixed
//! script of this file (`&'static str`) with values as positional parameters. File contents
//! travel base64-encoded as such parameters (in chunks below the kernel's limit for one
//! argument), are decoded on the host into a temporary file beside the destination and moved
//! into place, so a half-written file never replaces a good one. Nothing a playbook variable
//! holds can become shell syntax: the only shell text that holds variables is a `shell:` task,
//! and the loader admits a `{{ }}` there only when it ends with `| quote`.

use std::{
    fmt,
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    PlaybookError,
    jinja::{self, ansible_truthy},
    load::{Module, Play, Playbook, Task},
};
use crate::transport::{Command, CommandOutput, HostTarget, SshTransport, TransportError};

/// What happened to one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Ok,
    Changed,
    Skipped,
    Failed,
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Changed => "changed",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Failed => "failed",
        })
    }
}

/// One task's line in a [`PlaybookReport`].
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub play: String,
    pub task: String,
    pub status: TaskStatus,
    /// What the module said (a debug message, a failure, the reason for skipping...).
    pub message: String,
    /// A failure that `ignore_errors` let pass.
    pub ignored: bool,
}

/// What a playbook did on one host.
#[derive(Debug, Clone, Serialize)]
pub struct PlaybookReport {
    pub host: String,
    pub playbook: String,
    pub tasks: Vec<TaskReport>,
}

impl PlaybookReport {
    pub fn count(&self, status: TaskStatus) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }

    /// The report line of the task named `name` (the first one).
    pub fn task(&self, name: &str) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// Knobs of the runner.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How often `reboot` probes a host that is coming back.
    pub reboot_poll_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig { reboot_poll_interval: Duration::from_secs(1) }
    }
}

/// Runs playbooks on hosts. Cheap to clone; clones share the transport (connections, limits).
/// Holds no per-run state, so one runner serves any number of hosts at once.
#[derive(Clone, Debug)]
pub struct PlaybookRunner {
    transport: SshTransport,
    config: RunnerConfig,
}

/// The outcome of one module run.
struct Outcome {
    changed: bool,
    failed: bool,
    msg: String,
    stderr: String,
    /// module-specific result fields (rc, stdout, stat, ...)
    data: Map<String, Value>,
}

impl Outcome {
    fn ok(changed: bool) -> Outcome {
        Outcome { changed, failed: false, msg: String::new(), stderr: String::new(), data: Map::new() }
    }
    fn fail(msg: impl Into<String>) -> Outcome {
        Outcome { failed: true, msg: msg.into(), ..Outcome::ok(false) }
    }
    fn msg(mut self, msg: impl Into<String>) -> Outcome {
        self.msg = msg.into();
        self
    }
    fn from_output(out: &CommandOutput, argv: Value) -> Outcome {
        let mut o = Outcome::ok(true);
        let rc = out.exit_status.map(i64::from).unwrap_or(-1);
        o.data.insert("rc".into(), json!(rc));
        let stdout = out.stdout.strip_suffix('\n').unwrap_or(&out.stdout);
        let stderr = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
        o.data.insert("stdout".into(), json!(stdout));
        o.data.insert("stderr".into(), json!(stderr));
        o.data.insert("stdout_lines".into(), json!(stdout.lines().collect::<Vec<_>>()));
        o.data.insert("stderr_lines".into(), json!(stderr.lines().collect::<Vec<_>>()));
        o.data.insert("cmd".into(), argv);
        o.stderr = stderr.to_owned();
        if !out.success() {
            o.failed = true;
            o.msg = match &out.exit_signal {
                Some(sig) => format!("killed by signal {sig}"),
                None => format!("non-zero return code {rc}"),
            };
        }
        o
    }
}

/// Per-run state of one host.
struct HostRun<'a> {
    target: &'a HostTarget,
    playbook: &'a Playbook,
    extra: Map<String, Value>,
    /// set_fact and register results
    facts: Map<String, Value>,
    report: PlaybookReport,
}

impl HostRun<'_> {
    fn context(&self, play_vars: &Map<String, Value>) -> Map<String, Value> {
        let mut all = play_vars.clone();
        all.extend(self.facts.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.entry("inventory_hostname").or_insert_with(|| json!(self.target.address));
        all.entry("ansible_host").or_insert_with(|| json!(self.target.address));
        all
    }
}

enum Step {
    Continue,
    Stop(PlaybookError),
}

impl PlaybookRunner {
    pub fn new(transport: SshTransport) -> Self {
        PlaybookRunner { transport, config: RunnerConfig::default() }
    }

    pub fn with_config(transport: SshTransport, config: RunnerConfig) -> Self {
        PlaybookRunner { transport, config }
    }

    pub fn transport(&self) -> &SshTransport {
        &self.transport
    }

    /// Run every play of `playbook` on `target` with `extra_vars` (highest precedence, as
    /// `ansible-playbook --extra-vars`). A failed task that is not `ignore_errors` ends the run
    /// with [`PlaybookError::TaskFailed`]; an unreachable host with
    /// [`PlaybookError::Unreachable`]; both carry the report so far.
    pub async fn run(
        &self,
        playbook: &Playbook,
        target: &HostTarget,
        extra_vars: Map<String, Value>,
    ) -> Result<PlaybookReport, PlaybookError> {
        let mut run = HostRun {
            target,
            playbook,
            extra: extra_vars,
            facts: Map::new(),
            report: PlaybookReport {
                host: target.address.clone(),
                playbook: playbook.path().display().to_string(),
                tasks: Vec::new(),
            },
        };
        for play in playbook.plays() {
            // play vars are rendered once, in order, each seeing the extra vars and the earlier ones
            let mut play_vars = Map::new();
            for (k, v) in &play.vars {
                let ctx = jinja::context(&run.context(&play_vars));
                let value =
                    jinja::render_value(&playbook.inner.env, v, &ctx).map_err(|message| PlaybookError::TaskFailed {
                        host: target.address.clone(),
                        task: format!("vars of play {:?}", play.name),
                        message: format!("vars.{k}: {message}"),
                        stderr: String::new(),
                        report: Box::new(run.report.clone()),
                    })?;
                play_vars.insert(k.clone(), value);
            }
            for task in &play.tasks {
                if let Step::Stop(e) = self.run_task(&mut run, play, &play_vars, task).await {
                    return Err(e);
                }
            }
        }
        Ok(run.report)
    }

    async fn run_task(&self, run: &mut HostRun<'_>, play: &Play, play_vars: &Map<String, Value>, task: &Task) -> Step {
        let env = &run.playbook.inner.env;
        let host = run.target.address.clone();
        let vars = run.context(play_vars);
        let ctx = jinja::context(&vars);
        let line = |status, message: String, ignored| TaskReport {
            play: play.name.clone(),
            task: task.name.clone(),
            status,
            message,
            ignored,
        };

        // when: every condition must hold
        for cond in &task.when {
            match jinja::eval_condition(env, cond, &ctx) {
                Ok(true) => {}
                Ok(false) => {
                    let why = format!("condition is false: {}", cond_text(cond));
                    if let Some(r) = &task.register {
                        run.facts.insert(
                            r.clone(),
                            json!({"changed": false, "skipped": true, "skip_reason": "Conditional result was False"}),
                        );
                    }
                    run.report.tasks.push(line(TaskStatus::Skipped, why, false));
                    return Step::Continue;
                }
                Err(e) => {
                    let outcome = Outcome::fail(format!("when {}: {e}", cond_text(cond)));
                    return self.finish(run, play, task, &vars, outcome);
                }
            }
        }

        let args = match jinja::render_value(env, &task.args, &ctx) {
            Ok(a) => a,
            Err(e) => return self.finish(run, play, task, &vars, Outcome::fail(format!("template error: {e}"))),
        };
        match self.module(run, task, &args, &vars).await {
            Ok(outcome) => self.finish(run, play, task, &vars, outcome),
            Err(source) => {
                run.report.tasks.push(line(TaskStatus::Failed, format!("unreachable: {source}"), false));
                Step::Stop(PlaybookError::Unreachable {
                    host,
                    task: task.name.clone(),
                    source: Box::new(source),
                    report: Box::new(run.report.clone()),
                })
            }
        }
    }

    /// register, changed_when / failed_when, report line, stop on failure.
    fn finish(
        &self,
        run: &mut HostRun<'_>,
        play: &Play,
        task: &Task,
        vars: &Map<String, Value>,
        mut o: Outcome,
    ) -> Step {
        let env = &run.playbook.inner.env;
        let mut result = o.data.clone();
        result.insert("changed".into(), json!(o.changed));
        result.insert("failed".into(), json!(o.failed));
        if !o.msg.is_empty() {
            result.insert("msg".into(), json!(o.msg));
        }
        if task.changed_when.is_some() || task.failed_when.is_some() {
            // the conditions see the result under its register name
            let mut vars = vars.clone();
            if let Some(r) = &task.register {
                vars.insert(r.clone(), Value::Object(result.clone()));
            }
            let rctx = jinja::context(&vars);
            let all = |conds: &Vec<Value>| -> Result<bool, String> {
                for c in conds {
                    if !jinja::eval_condition(env, c, &rctx)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            if let Some(c) = &task.changed_when {
                match all(c) {
                    Ok(v) => o.changed = v,
                    Err(e) => o = Outcome::fail(format!("changed_when: {e}")),
                }
            }
            if let Some(c) = &task.failed_when {
                match all(c) {
                    Ok(v) => {
                        o.failed = v;
                        if v && o.msg.is_empty() {
                            o.msg = "failed_when condition is true".into();
                        }
                    }
                    Err(e) => o = Outcome::fail(format!("failed_when: {e}")),
                }
            }
            result.insert("changed".into(), json!(o.changed));
            result.insert("failed".into(), json!(o.failed));
        }
        if let Some(r) = &task.register {
            run.facts.insert(r.clone(), Value::Object(result));
        }
        let status = if o.failed {
            TaskStatus::Failed
        } else if o.changed {
            TaskStatus::Changed
        } else {
            TaskStatus::Ok
        };
        let ignored = o.failed && task.ignore_errors;
        run.report.tasks.push(TaskReport {
            play: play.name.clone(),
            task: task.name.clone(),
            status,
            message: o.msg.clone(),
            ignored,
        });
        if o.failed && !ignored {
            return Step::Stop(PlaybookError::TaskFailed {
                host: run.target.address.clone(),
                task: task.name.clone(),
                message: o.msg,
                stderr: o.stderr,
                report: Box::new(run.report.clone()),
            });
        }
        Step::Continue
    }

    async fn exec(&self, target: &HostTarget, cmd: &Command) -> Result<CommandOutput, TransportError> {
        self.transport.run(target, cmd).await
    }

    async fn module(
        &self,
        run: &mut HostRun<'_>,
        task: &Task,
        args: &Value,
        vars: &Map<String, Value>,
    ) -> Result<Outcome, TransportError> {
        let target = run.target;
        let arg = |k: &str| args.get(k);
        let text = |k: &str| args.get(k).map(value_text);
        match task.module {
            Module::Command => {
                let argv = match args {
                    Value::String(line) => shlex_split(line),
                    _ => match (arg("cmd"), arg("argv")) {
                        (Some(Value::String(line)), _) => shlex_split(line),
                        (_, Some(Value::Array(items))) => Ok(items.iter().map(value_text).collect()),
                        (_, Some(other)) => Err(format!("`argv` must be a list, not {other}")),
                        _ => Err("no command".into()),
                    },
                };
                let argv = match argv {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) => return Ok(Outcome::fail("empty command")),
                    Err(e) => return Ok(Outcome::fail(e)),
                };
                let cmd = Command::new(argv[0].clone()).args(argv[1..].iter().cloned());
                let out = self.exec(target, &cmd).await?;
                Ok(Outcome::from_output(&out, json!(argv)))
            }
            Module::Shell => {
                let script = match args {
                    Value::String(s) => s.clone(),
                    _ => text("cmd").unwrap_or_default(),
                };
                let cmd = Command::new("/bin/sh").arg("-c").arg(script.clone());
                let out = self.exec(target, &cmd).await?;
                Ok(Outcome::from_output(&out, json!(script)))
            }
            Module::Stat => {
                let Some(path) = text("path") else { return Ok(Outcome::fail("stat needs `path`")) };
                self.stat(target, &path).await
            }
            Module::File => {
                let (Some(path), state) = (text("path"), text("state")) else {
                    return Ok(Outcome::fail("file needs `path`"));
                };
                if state.as_deref() != Some("directory") {
                    return Ok(Outcome::fail("file: only `state: directory` is supported"));
                }
                let mode = match arg("mode").map(parse_mode).transpose() {
                    Ok(m) => m,
                    Err(e) => return Ok(Outcome::fail(e)),
                };
                self.directory(target, &path, mode).await
            }
            Module::Copy | Module::Template => {
                let Some(dest) = text("dest") else { return Ok(Outcome::fail("`dest` is required")) };
                let mode = match arg("mode").map(parse_mode).transpose() {
                    Ok(m) => m,
                    Err(e) => return Ok(Outcome::fail(e)),
                };
                let force = arg("force").map(|f| ansible_truthy(f).unwrap_or(true)).unwrap_or(true);
                let content: Vec<u8> = if task.module == Module::Template {
                    let src = text("src").unwrap_or_default();
                    let env = &run.playbook.inner.env;
                    match env.get_template(&src).and_then(|t| t.render(jinja::context(vars))) {
                        Ok(s) => s.into_bytes(),
                        Err(e) => return Ok(Outcome::fail(format!("template {src}: {}", jinja::describe(&e)))),
                    }
                } else if let Some(c) = arg("content") {
                    value_text(c).into_bytes()
                } else if let Some(src) = text("src") {
                    let dir = run.playbook.path().parent().unwrap_or(std::path::Path::new("."));
                    let path = if std::path::Path::new(&src).is_absolute() {
                        std::path::PathBuf::from(&src)
                    } else {
                        let in_files = dir.join("files").join(&src);
                        if in_files.exists() { in_files } else { dir.join(&src) }
                    };
                    match tokio::fs::read(&path).await {
                        Ok(b) => b,
                        Err(e) => return Ok(Outcome::fail(format!("cannot read {}: {e}", path.display()))),
                    }
                } else {
                    return Ok(Outcome::fail("copy needs `content` or `src`"));
                };
                self.write_file(target, &dest, &content, mode, force).await
            }
            Module::Service => self.service(target, args).await,
            Module::Package => self.package(target, args).await,
            Module::Reboot => self.reboot(target, args).await,
            Module::Fail => Ok(Outcome::fail(text("msg").unwrap_or_else(|| "Failed as requested from task".into()))),
            Module::Debug => {
                let msg = match (arg("msg"), arg("var")) {
                    (Some(m), _) => value_text(m),
                    (None, Some(Value::String(var))) => {
                        let v = vars.get(var).cloned().unwrap_or(json!("VARIABLE IS NOT DEFINED!"));
                        format!("{var}: {v}")
                    }
                    _ => "Hello world!".into(),
                };
                Ok(Outcome::ok(false).msg(msg))
            }
            Module::SetFact => {
                if let Value::Object(m) = args {
                    for (k, v) in m {
                        run.facts.insert(k.clone(), v.clone());
                    }
                }
                Ok(Outcome::ok(false))
            }
            Module::Ping => {
                let out = self.exec(target, &Command::new("true")).await?;
                let mut o = Outcome::from_output(&out, json!(["true"]));
                o.changed = false;
                o.data = Map::new();
                o.data.insert("ping".into(), arg("data").cloned().unwrap_or(json!("pong")));
                Ok(o)
            }
        }
    }

    async fn stat(&self, target: &HostTarget, path: &str) -> Result<Outcome, TransportError> {
        const STAT: &str = "if [ -e \"$1\" ] || [ -L \"$1\" ]; then stat -c '%F|%s|%a|%u|%g' -- \"$1\"; \
                            else echo missing; fi";
        let out = self.exec(target, &Command::script(STAT).arg(path)).await?;
        if !out.success() {
            return Ok(Outcome::fail(format!("stat {path}: {}", out.stderr.trim())));
        }
        let line = out.stdout.trim();
        let mut o = Outcome::ok(false);
        let stat = if line == "missing" {
            json!({"exists": false})
        } else {
            let f: Vec<&str> = line.split('|').collect();
            let kind = f.first().copied().unwrap_or("");
            json!({
                "exists": true,
                "path": path,
                "isdir": kind == "directory",
                "isreg": kind.starts_with("regular"),
                "islnk": kind == "symbolic link",
                "size": f.get(1).and_then(|s| s.parse::<u64>().ok()),
                "mode": f.get(2).map(|m| format!("{:0>4}", m)),
                "uid": f.get(3).and_then(|s| s.parse::<u64>().ok()),
                "gid": f.get(4).and_then(|s| s.parse::<u64>().ok()),
            })
        };
        o.data.insert("stat".into(), stat);
        Ok(o)
    }

    async fn directory(&self, target: &HostTarget, path: &str, mode: Option<u32>) -> Result<Outcome, TransportError> {
        const DIR: &str = "if [ -d \"$1\" ]; then echo exists; elif [ -e \"$1\" ]; then echo 'not a directory' >&2; \
                           exit 1; else mkdir -p -- \"$1\" && echo created; fi; stat -c %a -- \"$1\"";
        if !path.starts_with('/') {
            return Ok(Outcome::fail(format!("path {path:?} must be absolute")));
        }
        let out = self.exec(target, &Command::script(DIR).arg(path)).await?;
        if !out.success() {
            return Ok(Outcome::fail(format!("{path}: {}", out.stderr.trim())));
        }
        let mut lines = out.stdout.lines();
        let mut changed = lines.next() == Some("created");
        let current = lines.next().and_then(|m| u32::from_str_radix(m.trim(), 8).ok());
        if let Some(m) = mode
            && current != Some(m)
        {
            let out = self.exec(target, &Command::new("chmod").arg(format!("{m:o}")).operand(path)).await?;
            if !out.success() {
                return Ok(Outcome::fail(format!("chmod {path}: {}", out.stderr.trim())));
            }
            changed = true;
        }
        Ok(Outcome::ok(changed))
    }

    /// Put `content` at `dest`: unchanged if the same bytes are there already (mode aside).
    async fn write_file(
        &self,
        target: &HostTarget,
        dest: &str,
        content: &[u8],
        mode: Option<u32>,
        force: bool,
    ) -> Result<Outcome, TransportError> {
        const PROBE: &str = "if [ -d \"$1\" ]; then echo dir; elif [ -f \"$1\" ]; then \
                             printf 'file %s ' \"$(stat -L -c %a -- \"$1\")\" && sha256sum < \"$1\"; \
                             elif [ -e \"$1\" ]; then echo other; else echo missing; fi";
        const FIRST: &str = "set -e; umask 077; t=$(mktemp -- \"$1.commissaire-XXXXXX\"); \
                             printf '%s' \"$2\" | base64 -d > \"$t\"; printf '%s' \"$t\"";
        const APPEND: &str = "set -e; printf '%s' \"$2\" | base64 -d >> \"$1\"";
        const FINISH: &str = "set -e; if [ -e \"$2\" ]; then chown --reference=\"$2\" -- \"$1\"; \
                              chmod --reference=\"$2\" -- \"$1\"; else chmod 0644 -- \"$1\"; fi; \
                              if [ -n \"$3\" ]; then chmod -- \"$3\" \"$1\"; fi; mv -f -- \"$1\" \"$2\"";
        const CHMOD: &str = "chmod -- \"$2\" \"$1\"";
        const CHUNK: usize = 48 * 1024;
        if !dest.starts_with('/') {
            return Ok(Outcome::fail(format!("dest {dest:?} must be an absolute path")));
        }
        let probe = self.exec(target, &Command::script(PROBE).arg(dest)).await?;
        let state = probe.stdout.trim().to_owned();
        let want = hex(&Sha256::digest(content));
        let mode_text = mode.map(|m| format!("{m:04o}")).unwrap_or_default();
        let mut o = match state.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["dir"] => return Ok(Outcome::fail(format!("dest {dest} is a directory"))),
            ["other"] => return Ok(Outcome::fail(format!("dest {dest} is not a regular file"))),
            ["file", current_mode, sum, ..] => {
                let current_mode = u32::from_str_radix(current_mode, 8).ok();
                if *sum == want || !force {
                    let mut changed = false;
                    if let Some(m) = mode
                        && current_mode != Some(m)
                    {
                        let out = self.exec(target, &Command::script(CHMOD).arg(dest).arg(mode_text.clone())).await?;
                        if !out.success() {
                            return Ok(Outcome::fail(format!("chmod {dest}: {}", out.stderr.trim())));
                        }
                        changed = true;
                    }
                    let mut o = Outcome::ok(changed);
                    o.data.insert("dest".into(), json!(dest));
                    o.data.insert("checksum".into(), json!(want));
                    return Ok(o);
                }
                Outcome::ok(true)
            }
            ["missing"] => Outcome::ok(true),
            _ => return Ok(Outcome::fail(format!("cannot inspect {dest}: {}", probe.stderr.trim()))),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        let mut chunks = encoded.as_bytes().chunks(CHUNK * 4 / 3).map(|c| String::from_utf8_lossy(c).into_owned());
        let first = chunks.next().unwrap_or_default();
        let out = self.exec(target, &Command::script(FIRST).arg(dest).arg(first)).await?;
        if !out.success() {
            let parent = dest.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
            return Ok(Outcome::fail(format!(
                "cannot write {dest} (does the directory {parent} exist?): {}",
                out.stderr.trim()
            )));
        }
        let temp = out.stdout.trim().to_owned();
        for chunk in chunks {
            let out = self.exec(target, &Command::script(APPEND).arg(temp.clone()).arg(chunk)).await?;
            if !out.success() {
                let _ = self.exec(target, &Command::new("rm").arg("-f").operand(temp.clone())).await;
                return Ok(Outcome::fail(format!("writing {dest}: {}", out.stderr.trim())));
            }
        }
        let out = self.exec(target, &Command::script(FINISH).arg(temp.clone()).arg(dest).arg(mode_text)).await?;
        if !out.success() {
            let _ = self.exec(target, &Command::new("rm").arg("-f").operand(temp)).await;
            return Ok(Outcome::fail(format!("installing {dest}: {}", out.stderr.trim())));
        }
        o.data.insert("dest".into(), json!(dest));
        o.data.insert("checksum".into(), json!(want));
        Ok(o)
    }

    async fn service(&self, target: &HostTarget, args: &Value) -> Result<Outcome, TransportError> {
        let Some(name) = args.get("name").map(value_text) else { return Ok(Outcome::fail("service needs `name`")) };
        if !valid_unit(&name) {
            return Ok(Outcome::fail(format!("{name:?} is not a service name")));
        }
        let systemctl = |verb: &str| Command::new("systemctl").arg(verb).arg(name.clone());
        let mut changed = false;
        let mut done = Vec::new();
        if args.get("daemon_reload").and_then(ansible_truthy) == Some(true) {
            let out = self.exec(target, &Command::new("systemctl").arg("daemon-reload")).await?;
            if !out.success() {
                return Ok(Outcome::fail(format!("systemctl daemon-reload: {}", out.stderr.trim())));
            }
        }
        // The failed outcome of `systemctl VERB NAME`, with its stderr.
        let verb_failed = |verb: &str, out: &CommandOutput| {
            (!out.success()).then(|| {
                let mut o = Outcome::fail(format!("systemctl {verb} {name} failed"));
                o.stderr = out.stderr.trim().to_owned();
                o
            })
        };
        if let Some(want) = args.get("enabled").map(|v| ansible_truthy(v).unwrap_or(false)) {
            let is = self.exec(target, &systemctl("is-enabled")).await?.success();
            if is != want {
                let verb = if want { "enable" } else { "disable" };
                if let Some(failed) = verb_failed(verb, &self.exec(target, &systemctl(verb)).await?) {
                    return Ok(failed);
                }
                changed = true;
                done.push(verb);
            }
        }
        if let Some(state) = args.get("state").map(value_text) {
            let verb = match state.as_str() {
                "started" | "stopped" => {
                    let active = self.exec(target, &systemctl("is-active")).await?.success();
                    match (state.as_str(), active) {
                        ("started", false) => Some("start"),
                        ("stopped", true) => Some("stop"),
                        _ => None,
                    }
                }
                "restarted" => Some("restart"),
                "reloaded" => Some("reload"),
                other => return Ok(Outcome::fail(format!("service state {other:?} is not supported"))),
            };
            if let Some(verb) = verb {
                if let Some(failed) = verb_failed(verb, &self.exec(target, &systemctl(verb)).await?) {
                    return Ok(failed);
                }
                changed = true;
                done.push(verb);
            }
        }
        let mut o = Outcome::ok(changed);
        o.data.insert("name".into(), json!(name));
        if !done.is_empty() {
            o.msg = format!("{}: {}", name, done.join(", "));
        }
        Ok(o)
    }

    async fn package(&self, target: &HostTarget, args: &Value) -> Result<Outcome, TransportError> {
        let names: Vec<String> = match args.get("name") {
            Some(Value::Array(items)) => items.iter().map(value_text).collect(),
            Some(Value::String(s)) => s.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
            _ => return Ok(Outcome::fail("package needs `name`")),
        };
        if let Some(bad) = names.iter().find(|n| !valid_package(n)) {
            return Ok(Outcome::fail(format!("{bad:?} is not a package name")));
        }
        let state = args.get("state").map(value_text).unwrap_or_else(|| "present".into());
        let latest = match state.as_str() {
            "present" | "installed" => false,
            "latest" => true,
            other => return Ok(Outcome::fail(format!("package state {other:?} is not supported"))),
        };
        let manager = match args.get("use").map(value_text).as_deref() {
            None | Some("auto") => {
                const DETECT: &str = "for m in dnf yum apt-get; do if command -v \"$m\" >/dev/null 2>&1; then \
                                      echo \"$m\"; exit 0; fi; done; exit 1";
                let out = self.exec(target, &Command::script(DETECT)).await?;
                match out.stdout.trim() {
                    "apt-get" => "apt".to_owned(),
                    m if out.success() => m.to_owned(),
                    _ => return Ok(Outcome::fail("no package manager (dnf, yum, apt-get) found")),
                }
            }
            Some(m) => m.to_owned(),
        };
        let update_cache = args.get("update_cache").and_then(ansible_truthy) == Some(true);
        let (query, update, install, upgrade): (fn(&str) -> Command, Command, Command, Command) = match manager.as_str()
        {
            "apt" => {
                let apt = || {
                    Command::new("env").args([
                        "DEBIAN_FRONTEND=noninteractive",
                        "DEBIAN_PRIORITY=critical",
                        "apt-get",
                        "-y",
                        "-o",
                        "Dpkg::Options::=--force-confdef",
                        "-o",
                        "Dpkg::Options::=--force-confold",
                    ])
                };
                (
                    |n| Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}\\n", n]),
                    Command::new("apt-get").arg("update"),
                    apt().arg("install"),
                    apt().arg("install"),
                )
            }
            "dnf" | "yum" => (
                |n| Command::new("rpm").args(["-q", "--qf", "install ok installed %{VERSION}-%{RELEASE}\\n", n]),
                Command::new(manager.clone()).arg("makecache"),
                Command::new(manager.clone()).args(["-y", "install"]),
                Command::new(manager.clone()).args(["-y", "upgrade"]),
            ),
            other => return Ok(Outcome::fail(format!("package manager {other:?} is not supported"))),
        };
        let versions = async |names: &[String]| -> Result<Vec<Option<String>>, TransportError> {
            let mut v = Vec::new();
            for n in names {
                let out = self.exec(target, &query(n)).await?;
                let line = out.stdout.lines().next().unwrap_or("").trim().to_owned();
                v.push(match line.strip_prefix("install ok installed") {
                    Some(version) if out.success() => Some(version.trim().to_owned()),
                    _ => None,
                });
            }
            Ok(v)
        };
        let before = versions(&names).await?;
        let missing: Vec<String> =
            names.iter().zip(&before).filter(|(_, v)| v.is_none()).map(|(n, _)| n.clone()).collect();
        let installed: Vec<String> =
            names.iter().zip(&before).filter(|(_, v)| v.is_some()).map(|(n, _)| n.clone()).collect();
        if missing.is_empty() && !latest {
            return Ok(Outcome::ok(false).msg(format!("installed: {}", names.join(", "))));
        }
        if update_cache {
            let out = self.exec(target, &update).await?;
            if !out.success() {
                let mut o = Outcome::fail(format!("{manager}: updating the package cache failed"));
                o.stderr = out.stderr.trim().to_owned();
                return Ok(o);
            }
        }
        let mut steps = Vec::new();
        if !missing.is_empty() {
            steps.push(install.args(missing.iter().cloned()));
        }
        if latest && !installed.is_empty() {
            steps.push(upgrade.args(installed.iter().cloned()));
        }
        for cmd in steps {
            let out = self.exec(target, &cmd).await?;
            if !out.success() {
                let mut o = Outcome::fail(format!("{manager}: installing {} failed", names.join(", ")));
                o.stderr = out.stderr.trim().to_owned();
                return Ok(o);
            }
        }
        let after = versions(&names).await?;
        if let Some((n, _)) = names.iter().zip(&after).find(|(_, v)| v.is_none()) {
            return Ok(Outcome::fail(format!("{manager}: {n} is still not installed")));
        }
        let changed = before != after;
        Ok(Outcome::ok(changed).msg(format!("installed: {}", names.join(", "))))
    }

    /// Ansible's `reboot`: read the boot id, run shutdown (a dropped connection is expected),
    /// then wait until the host answers with a different boot id and runs the test command.
    async fn reboot(&self, target: &HostTarget, args: &Value) -> Result<Outcome, TransportError> {
        const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";
        const SHUTDOWN: &str = "for d in /sbin /bin /usr/sbin /usr/bin /usr/local/sbin; do \
                                if [ -x \"$d/shutdown\" ]; then exec \"$d/shutdown\" -r 0 \"$1\"; fi; done; \
                                echo 'shutdown: command not found in /sbin /bin /usr/sbin /usr/bin /usr/local/sbin' >&2; \
                                exit 127";
        let number = |k: &str, default: u64| match args.get(k) {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_u64().ok_or(format!("`{k}` must be a whole number of seconds")),
            Some(Value::String(s)) => s.trim().parse::<u64>().map_err(|_| format!("`{k}` must be a number")),
            Some(_) => Err(format!("`{k}` must be a number")),
        };
        let (timeout, post_delay) = match (number("reboot_timeout", 600), number("post_reboot_delay", 0)) {
            (Ok(t), Ok(p)) => (Duration::from_secs(t), Duration::from_secs(p)),
            (Err(e), _) | (_, Err(e)) => return Ok(Outcome::fail(e)),
        };
        let msg = args.get("msg").map(value_text).unwrap_or_else(|| "Reboot initiated by Commissaire".into());
        let test_command = args.get("test_command").map(value_text).unwrap_or_else(|| "whoami".into());
        let test_argv = match shlex_split(&test_command) {
            Ok(a) if !a.is_empty() => a,
            _ => return Ok(Outcome::fail(format!("test_command {test_command:?} cannot be split into words"))),
        };
        let started = Instant::now();

        let before = self.exec(target, &Command::script(BOOT_ID)).await?;
        let before_id = before.stdout.trim().to_owned();
        if !before.success() || before_id.is_empty() {
            return Ok(Outcome::fail(format!("cannot read the boot id: {}", before.stderr.trim())));
        }
        match self.exec(target, &Command::script(SHUTDOWN).arg(msg)).await {
            Ok(out) if out.success() || out.exit_status.is_none() => {}
            Ok(out) => {
                let mut o =
                    Outcome::fail(format!("Reboot command failed: {}, {}", out.stdout.trim(), out.stderr.trim()));
                o.data.insert("rebooted".into(), json!(false));
                return Ok(o);
            }
            // the host dropped the session while going down: expected
            Err(e) => tracing::debug!(host = %target.address, error = %e, "session ended by the reboot"),
        }

        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no answer yet");
        loop {
            if Instant::now() >= deadline {
                let mut o = Outcome::fail(format!(
                    "timed out waiting for the host to come back with a new boot id (timeout={}s); last: {last_error}",
                    timeout.as_secs()
                ));
                o.data.insert("rebooted".into(), json!(false));
                return Ok(o);
            }
            match self.exec(target, &Command::script(BOOT_ID)).await {
                Ok(out) if out.success() && !out.stdout.trim().is_empty() && out.stdout.trim() != before_id => break,
                Ok(out) if out.success() => last_error = "boot id unchanged (not rebooted yet)".into(),
                Ok(out) => last_error = format!("boot id: {}", out.stderr.trim()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(self.config.reboot_poll_interval).await;
        }
        if !post_delay.is_zero() {
            tokio::time::sleep(post_delay).await;
        }
        loop {
            let cmd = Command::new(test_argv[0].clone()).args(test_argv[1..].iter().cloned());
            match self.exec(target, &cmd).await {
                Ok(out) if out.success() => break,
                Ok(out) => last_error = format!("test command: {}", out.stderr.trim()),
                Err(e) => last_error = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Ok(Outcome::fail(format!(
                    "the host came back but its test command did not succeed in time: {last_error}"
                )));
            }
            tokio::time::sleep(self.config.reboot_poll_interval).await;
        }
        let mut o = Outcome::ok(true);
        o.data.insert("rebooted".into(), json!(true));
        o.data.insert("elapsed".into(), json!(started.elapsed().as_secs()));
        Ok(o)
    }
}

fn cond_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value as a command word / file content: strings as they are, numbers and booleans as
/// Ansible prints them (`True`), structures as JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `"0644"`, `"644"`, `0644` (read by YAML as 644 decimal, as Ansible warns) → the mode bits.
fn parse_mode(v: &Value) -> Result<u32, String> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("mode must be an octal string such as \"0644\", not {other}")),
    };
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("mode {text:?} must be octal digits such as \"0644\""));
    }
    u32::from_str_radix(&text, 8).map_err(|e| e.to_string())
}

fn valid_unit(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b':' | b'-' | b'\\'))
}

fn valid_package(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'_' | b':' | b'-' | b'='))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Python's `shlex.split` (POSIX mode, no comments): how Ansible splits a `command` line.
pub(crate) fn shlex_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("no closing quotation".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("no closing quotation".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("no closing quotation".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("no escaped character".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlex_like_python() {
        assert_eq!(shlex_split("rpm-ostree upgrade").expect("split"), vec!["rpm-ostree", "upgrade"]);
        assert_eq!(
            shlex_split("echo 'a b' \"c \\\"d\\\"\" e\\ f").expect("split"),
            vec!["echo", "a b", "c \"d\"", "e f"]
        );
        assert_eq!(shlex_split("a ''").expect("split"), vec!["a", ""]);
        assert!(shlex_split("echo 'x").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode(&json!("0644")), Ok(0o644));
        assert_eq!(parse_mode(&json!("600")), Ok(0o600));
        assert!(parse_mode(&json!("u+x")).is_err());
        assert!(parse_mode(&json!("0999")).is_err());
    }

    #[test]
    fn names() {
        assert!(valid_unit("docker") && valid_unit("flanneld.service") && valid_unit("getty@tty1"));
        assert!(!valid_unit("--now") && !valid_unit("a b") && !valid_unit("x;y"));
        assert!(valid_package("docker.io") && valid_package("python3-libselinux") && valid_package("g++"));
        assert!(!valid_package("-y") && !valid_package("a b") && !valid_package("$(x)"));
    }
}
