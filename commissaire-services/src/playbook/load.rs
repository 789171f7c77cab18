//! Loading a playbook: Ansible's YAML, checked against the subset the engine runs.
//!
//! Everything is checked before any host is touched: keys of plays and tasks, the module and
//! its arguments, the syntax of every `{{ }}` and condition, and the templates a `template:`
//! task names (read from `templates/` beside the playbook, as Ansible finds them). Anything
//! outside the subset is a [`PlaybookError::Unsupported`] naming the file, the play, the task
//! and the key.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use minijinja::Environment;
use serde_json::{Map, Value};

use super::{
    PlaybookError,
    jinja::{self, ansible_truthy, is_templated},
};

/// A loaded, checked playbook. Cheap to clone and share between tasks running many hosts.
#[derive(Clone)]
pub struct Playbook {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) plays: Vec<Play>,
    pub(crate) env: Environment<'static>,
}

impl std::fmt::Debug for Playbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbook")
            .field("path", &self.inner.path)
            .field("plays", &self.inner.plays.iter().map(|p| &p.name).collect::<Vec<_>>())
            .finish()
    }
}

/// One play.
#[derive(Debug, Clone)]
pub struct Play {
    pub name: String,
    /// `serial` as written (`1`, `"25%"`), for the caller that rolls over many hosts.
    pub serial: Option<Value>,
    pub(crate) vars: Map<String, Value>,
    pub(crate) tasks: Vec<Task>,
}

/// One task.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) name: String,
    pub(crate) module: Module,
    /// the module's arguments, still templated
    pub(crate) args: Value,
    pub(crate) when: Vec<Value>,
    pub(crate) register: Option<String>,
    pub(crate) ignore_errors: bool,
    pub(crate) changed_when: Option<Vec<Value>>,
    pub(crate) failed_when: Option<Vec<Value>>,
}

/// The modules of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Module {
    Command,
    Shell,
    Copy,
    Template,
    File,
    Stat,
    Service,
    Package,
    Reboot,
    Fail,
    Debug,
    SetFact,
    Ping,
}

impl Module {
    fn from_key(key: &str) -> Option<Module> {
        let short = key.strip_prefix("ansible.builtin.").or_else(|| key.strip_prefix("ansible.legacy.")).unwrap_or(key);
        Some(match short {
            "command" => Module::Command,
            "shell" => Module::Shell,
            "copy" => Module::Copy,
            "template" => Module::Template,
            "file" => Module::File,
            "stat" => Module::Stat,
            "service" | "systemd" | "systemd_service" => Module::Service,
            "package" => Module::Package,
            "reboot" => Module::Reboot,
            "fail" => Module::Fail,
            "debug" => Module::Debug,
            "set_fact" => Module::SetFact,
            "ping" => Module::Ping,
            _ => return None,
        })
    }

    /// Argument keys this engine implements.
    fn allowed_args(self) -> &'static [&'static str] {
        match self {
            Module::Command => &["cmd", "argv"],
            Module::Shell => &["cmd"],
            Module::Copy => &["content", "src", "dest", "mode", "force"],
            Module::Template => &["src", "dest", "mode", "force"],
            Module::File => &["path", "state", "mode"],
            Module::Stat => &["path"],
            Module::Service => &["name", "state", "enabled", "daemon_reload"],
            Module::Package => &["name", "state", "use", "update_cache"],
            Module::Reboot => &["reboot_timeout", "msg", "post_reboot_delay", "test_command"],
            Module::Fail => &["msg"],
            Module::Debug => &["msg", "var"],
            Module::SetFact => &[],
            Module::Ping => &["data"],
        }
    }

    /// Modules whose arguments may be a free-form string.
    fn free_form(self) -> bool {
        matches!(self, Module::Command | Module::Shell)
    }
}

const PLAY_KEYS: &[&str] = &["name", "hosts", "gather_facts", "become", "become_user", "vars", "serial", "tasks"];
const TASK_KEYS: &[&str] = &["name", "when", "register", "ignore_errors", "changed_when", "failed_when"];

impl Playbook {
    /// Read and check the playbook at `path` (and the templates it uses, from `templates/`
    /// beside it).
    pub fn load(path: impl AsRef<Path>) -> Result<Playbook, PlaybookError> {
        let path = path.as_ref().to_path_buf();
        let text =
            std::fs::read_to_string(&path).map_err(|source| PlaybookError::Read { path: path.clone(), source })?;
        Playbook::parse(&path, &text)
    }

    /// Check a playbook given as text; `path` names it in errors and locates `templates/`.
    pub fn parse(path: &Path, text: &str) -> Result<Playbook, PlaybookError> {
        let doc: Value = yaml_serde::from_str(text)
            .map_err(|e| PlaybookError::Yaml { path: path.to_path_buf(), message: e.to_string() })?;
        let mut env = jinja::environment();
        let mut templates = HashMap::new();
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let unsupported = |location: String, message: String| PlaybookError::Unsupported {
            path: path.to_path_buf(),
            location,
            message,
        };
        let Value::Array(plays_yaml) = doc else {
            return Err(unsupported("top level".into(), "a playbook is a list of plays".into()));
        };
        let mut plays = Vec::new();
        for (pi, play_yaml) in plays_yaml.iter().enumerate() {
            let Value::Object(p) = play_yaml else {
                return Err(unsupported(format!("play {}", pi + 1), "a play is a mapping".into()));
            };
            let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            let loc = if name.is_empty() { format!("play {}", pi + 1) } else { format!("play {} ({name})", pi + 1) };
            for key in p.keys() {
                if !PLAY_KEYS.contains(&key.as_str()) {
                    return Err(unsupported(loc, format!("key `{key}` is not supported in a play")));
                }
            }
            match p.get("hosts").and_then(Value::as_str) {
                Some("all") => {}
                _ => {
                    return Err(unsupported(
                        loc,
                        "`hosts` must be `all` (the engine runs the host it is given)".into(),
                    ));
                }
            }
            if p.get("gather_facts").and_then(ansible_truthy) != Some(false) {
                return Err(unsupported(
                    loc,
                    "`gather_facts: no` is required (the engine gathers no facts; pass what a play needs as \
                     variables)"
                        .into(),
                ));
            }
            if let Some(b) = p.get("become")
                && ansible_truthy(b) != Some(true)
            {
                return Err(unsupported(
                    loc,
                    "`become` may only be yes: the engine always runs as root (sudo for other users)".into(),
                ));
            }
            if let Some(u) = p.get("become_user")
                && u.as_str() != Some("root")
            {
                return Err(unsupported(loc, "`become_user` may only be root".into()));
            }
            let vars = match p.get("vars") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => m.clone(),
                Some(_) => return Err(unsupported(loc, "`vars` must be a mapping".into())),
            };
            for (k, v) in &vars {
                jinja::check_value(&env, v).map_err(|e| unsupported(loc.clone(), format!("vars.{k}: {e}")))?;
            }
            let serial = p.get("serial").cloned();
            let tasks_yaml = match p.get("tasks") {
                Some(Value::Array(t)) => t.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(unsupported(loc, "`tasks` must be a list".into())),
            };
            let mut tasks = Vec::new();
            for (ti, t) in tasks_yaml.iter().enumerate() {
                let task = parse_task(&env, &dir, &mut templates, t).map_err(|(task_name, message)| {
                    let tloc = match task_name {
                        Some(n) => format!("{loc}, task {} ({n})", ti + 1),
                        None => format!("{loc}, task {}", ti + 1),
                    };
                    unsupported(tloc, message)
                })?;
                tasks.push(task);
            }
            plays.push(Play { name, serial, vars, tasks });
        }
        for (name, source) in &templates {
            env.add_template_owned(name.clone(), source.clone()).map_err(|e| PlaybookError::Unsupported {
                path: path.to_path_buf(),
                location: format!("template {name}"),
                message: jinja::describe(&e),
            })?;
        }
        Ok(Playbook { inner: Arc::new(Inner { path: path.to_path_buf(), plays, env }) })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Its plays, in order.
    pub fn plays(&self) -> &[Play] {
        &self.inner.plays
    }

    /// Names of the tasks of every play, in order (for reports and tests).
    pub fn task_names(&self) -> Vec<String> {
        self.inner.plays.iter().flat_map(|p| p.tasks.iter().map(|t| t.name.clone())).collect()
    }
}

/// `Err((task name if known, message))`.
fn parse_task(
    env: &Environment<'static>,
    dir: &Path,
    templates: &mut HashMap<String, String>,
    t: &Value,
) -> Result<Task, (Option<String>, String)> {
    let Value::Object(t) = t else { return Err((None, "a task is a mapping".into())) };
    let given_name = t.get("name").and_then(Value::as_str).map(str::to_owned);
    let fail = |m: String| (given_name.clone(), m);
    let mut module = None;
    for key in t.keys() {
        if TASK_KEYS.contains(&key.as_str()) {
            continue;
        }
        match Module::from_key(key) {
            Some(m) if module.is_none() => module = Some((m, key.clone())),
            Some(_) => return Err(fail(format!("key `{key}`: a task runs exactly one module"))),
            None => {
                return Err(fail(format!(
                    "key `{key}` is not supported (neither a task keyword of the subset nor a module)"
                )));
            }
        }
    }
    let Some((module, module_key)) = module else { return Err(fail("the task names no module".into())) };
    let name = given_name.clone().unwrap_or_else(|| module_key.clone());
    let args = t.get(&module_key).cloned().unwrap_or(Value::Null);

    // argument shape
    match (&args, module) {
        (Value::String(s), m) if m.free_form() => {
            if s.trim().is_empty() {
                return Err(fail(format!("`{module_key}` needs a command")));
            }
            check_free_form(module, s).map_err(|m| fail(format!("`{module_key}`: {m}")))?;
        }
        (Value::Object(a), m) => {
            for k in a.keys() {
                if m != Module::SetFact && !m.allowed_args().contains(&k.as_str()) {
                    return Err(fail(format!("`{module_key}` argument `{k}` is not supported")));
                }
            }
            if let Some(Value::String(cmd)) = a.get("cmd") {
                check_free_form(module, cmd).map_err(|m| fail(format!("`{module_key}.cmd`: {m}")))?;
            }
            if module == Module::Command && a.contains_key("cmd") == a.contains_key("argv") {
                return Err(fail("`command` takes either `cmd` or `argv`".into()));
            }
        }
        (Value::Null, Module::Ping) => {}
        _ => return Err(fail(format!("`{module_key}` arguments must be a mapping (key: value)"))),
    }
    jinja::check_value(env, &args).map_err(|e| fail(format!("`{module_key}`: {e}")))?;

    // templates named by a literal src are read and checked now; the engine renders only these
    if module == Module::Template {
        match args.get("src") {
            Some(Value::String(src)) if !is_templated(src) => {
                if !templates.contains_key(src) {
                    let file = template_path(dir, src);
                    let source = std::fs::read_to_string(&file)
                        .map_err(|e| fail(format!("template {}: {e}", file.display())))?;
                    env.template_from_str(&source)
                        .map_err(|e| fail(format!("template {}: {}", file.display(), jinja::describe(&e))))?;
                    templates.insert(src.clone(), source);
                }
            }
            _ => return Err(fail("`template.src` must be a fixed file name (no variables)".into())),
        }
    }

    let conditions = |key: &str| -> Result<Option<Vec<Value>>, (Option<String>, String)> {
        let list = match t.get(key) {
            None => return Ok(None),
            Some(Value::Array(items)) => items.clone(),
            Some(one) => vec![one.clone()],
        };
        for c in &list {
            jinja::check_condition(env, c).map_err(|e| fail(format!("`{key}`: {e}")))?;
        }
        Ok(Some(list))
    };
    let when = conditions("when")?.unwrap_or_default();
    let changed_when = conditions("changed_when")?;
    let failed_when = conditions("failed_when")?;
    let register = match t.get("register") {
        None => None,
        Some(Value::String(r)) if valid_identifier(r) => Some(r.clone()),
        Some(other) => return Err(fail(format!("`register` must be a variable name, not {other}"))),
    };
    let ignore_errors = match t.get("ignore_errors") {
        None => false,
        Some(v) => ansible_truthy(v).ok_or_else(|| fail("`ignore_errors` must be yes or no".into()))?,
    };
    if module == Module::SetFact
        && let Value::Object(a) = &args
        && let Some(k) = a.keys().find(|k| !valid_identifier(k))
    {
        return Err(fail(format!("`set_fact`: {k:?} is not a variable name")));
    }
    Ok(Task { name, module, args, when, register, ignore_errors, changed_when, failed_when })
}

/// Ansible's lookup for a relative template: `templates/<src>` beside the playbook, then beside it.
pub(crate) fn template_path(dir: &Path, src: &str) -> PathBuf {
    let p = Path::new(src);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let in_templates = dir.join("templates").join(p);
    if in_templates.exists() { in_templates } else { dir.join(p) }
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Free-form commands: `command` lines hold no template (values go in `argv`, one word each);
/// in `shell` scripts every `{{ }}` must end with `| quote`, so a value is one shell word.
fn check_free_form(module: Module, s: &str) -> Result<(), String> {
    match module {
        Module::Command if is_templated(s) => Err(
            "a command line may not hold `{{ }}` (it would be split into words); use `argv` with one value per item"
                .into(),
        ),
        Module::Shell => {
            if s.contains("{%") || s.contains("{#") {
                return Err("a shell script may not hold `{% %}` blocks".into());
            }
            let mut rest = s;
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let end = after.find("}}").ok_or("unclosed `{{`")?;
                let expr = after[..end].trim();
                let last_filter = expr.rsplit('|').next().map(str::trim);
                if !expr.contains('|') || last_filter != Some("quote") {
                    return Err(format!("`{{{{ {expr} }}}}` in a shell script must end with `| quote`"));
                }
                rest = &after[end + 2..];
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Playbook, PlaybookError> {
        Playbook::parse(Path::new("/nonexistent/test.yaml"), text)
    }

    fn unsupported(text: &str) -> String {
        match parse(text) {
            Err(e @ PlaybookError::Unsupported { .. }) => e.to_string(),
            Err(e) => panic!("expected Unsupported, got {e}"),
            Ok(_) => panic!("expected an error for {text}"),
        }
    }

    const HEAD: &str = "- name: p\n  hosts: all\n  gather_facts: no\n  tasks:\n";

    #[test]
    fn a_small_playbook_loads() {
        let pb = parse(&format!(
            "{HEAD}    - name: one\n      command: /bin/true\n    - stat:\n        path: /run/ostree-booted\n      register: st\n    - name: three\n      command:\n        argv: [echo, \"{{{{ x }}}}\"]\n      when: not st.stat.exists\n"
        ))
        .expect("loads");
        assert_eq!(pb.task_names(), vec!["one", "stat", "three"]);
        assert_eq!(pb.plays()[0].name, "p");
    }

    #[test]
    fn refusals_name_file_task_and_key() {
        let e = unsupported(&format!("{HEAD}    - name: bg\n      command: sleep 1\n      async: 10\n"));
        assert!(e.contains("/nonexistent/test.yaml") && e.contains("task 1 (bg)") && e.contains("`async`"), "{e}");
        let e = unsupported(&format!("{HEAD}    - name: l\n      lineinfile:\n        path: /x\n"));
        assert!(e.contains("`lineinfile`"), "{e}");
        let e = unsupported(&format!("{HEAD}    - name: c\n      copy:\n        dest: /x\n        owner: nobody\n"));
        assert!(e.contains("`owner`"), "{e}");
        let e = unsupported("- hosts: all\n  tasks: []\n");
        assert!(e.contains("gather_facts"), "{e}");
        let e = unsupported("- hosts: all\n  gather_facts: no\n  roles: [x]\n");
        assert!(e.contains("`roles`"), "{e}");
        let e = unsupported(&format!("{HEAD}    - command: echo {{{{ x }}}}\n"));
        assert!(e.contains("argv"), "{e}");
        let e = unsupported(&format!("{HEAD}    - shell: echo {{{{ x }}}} > /tmp/y\n"));
        assert!(e.contains("| quote"), "{e}");
        let e = unsupported(&format!("{HEAD}    - debug:\n        msg: \"{{{{ x \"\n"));
        assert!(e.contains("task 1") && e.contains("`debug`") && e.contains("syntax error"), "{e}");
        let e = unsupported(&format!("{HEAD}    - debug:\n        msg: hi\n      when: \"x ==\"\n"));
        assert!(e.contains("`when`"), "{e}");
        let e = unsupported(&format!("{HEAD}    - template:\n        src: nothere.j2\n        dest: /x\n"));
        assert!(e.contains("nothere.j2"), "{e}");
        let e = unsupported(&format!("{HEAD}    - command: a\n      shell: b\n"));
        assert!(e.contains("exactly one module"), "{e}");
    }

    #[test]
    fn quoted_shell_values_are_accepted() {
        parse(&format!("{HEAD}    - shell: echo {{{{ x | quote }}}} > /tmp/y\n")).expect("quoted is fine");
    }

    #[test]
    fn bad_yaml_is_a_yaml_error() {
        assert!(matches!(parse("- name: [unclosed"), Err(PlaybookError::Yaml { .. })));
    }

    fn shipped(name: &str) -> Playbook {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks").join(name);
        Playbook::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn shipped_playbooks_load() {
        for name in ["bootstrap.yaml", "check_host_availability.yaml", "restart.yaml", "upgrade.yaml", "deploy.yaml"] {
            let pb = shipped(name);
            assert!(!pb.task_names().is_empty(), "{name}");
        }
        for name in ["restart.yaml", "upgrade.yaml", "deploy.yaml"] {
            assert_eq!(shipped(name).plays()[0].serial, Some(serde_json::json!(1)), "{name} is serial");
        }
    }

    fn render(name: &str, vars: serde_json::Value) -> String {
        let pb = shipped("bootstrap.yaml");
        let Value::Object(vars) = vars else { unreachable!("object") };
        let out = pb.inner.env.get_template(name).and_then(|t| t.render(jinja::context(&vars)));
        out.unwrap_or_else(|e| panic!("{name}: {}", jinja::describe(&e)))
    }

    #[test]
    fn flanneld_template() {
        let etcd = render(
            "flanneld.j2",
            serde_json::json!({"commissaire_etcd_server_url": "http://127.0.0.1:2379", "commissaire_flannel_key": "/atomic01/network"}),
        );
        assert!(etcd.contains("FLANNEL_ETCD=http://127.0.0.1:2379\n"), "{etcd}");
        assert!(etcd.contains("FLANNEL_ETCD_PREFIX=/atomic01/network\n"), "{etcd}");
        assert!(!etcd.contains("FLANNEL_OPTIONS"), "{etcd}");
        let server = render(
            "flanneld.j2",
            serde_json::json!({"commissaire_flanneld_server": "fl.example.com:8080", "commissaire_flannel_key": "/k"}),
        );
        assert!(!server.contains("FLANNEL_ETCD"), "{server}");
        assert!(server.contains("FLANNEL_OPTIONS=--remote=fl.example.com:8080\n"), "{server}");
        let tls = render(
            "flanneld.j2",
            serde_json::json!({
                "commissaire_etcd_server_url": "https://e:2379", "commissaire_flannel_key": "/k",
                "commissaire_etcd_client_key_path": "/etc/etcd/key.crt",
                "commissaire_etcd_client_cert_path": "/etc/etcd/client.crt",
                "commissaire_etcd_ca_path": "/etc/etcd/cacert.pem"}),
        );
        assert!(
            tls.contains(
                "FLANNEL_OPTIONS='--remote-keyfile=/etc/etcd/key.crt --remote-certfile=/etc/etcd/client.crt \
                 --etcd-cafile=/etc/etcd/cacert.pem'\n"
            ),
            "{tls}"
        );
        // hostile values stay data: one quoted shell word, no new line of the file
        let hostile = render(
            "flanneld.j2",
            serde_json::json!({"commissaire_etcd_server_url": "x'; touch /tmp/p #\nEVIL=1", "commissaire_flannel_key": "$(reboot)"}),
        );
        assert!(hostile.contains("FLANNEL_ETCD_KEY='$(reboot)'\n"), "{hostile}");
        assert!(hostile.contains("FLANNEL_ETCD='x'\"'\"'; touch /tmp/p #\nEVIL=1'\n"), "{hostile}");
    }

    #[test]
    fn docker_template() {
        let plain = render("docker.j2", serde_json::json!({}));
        assert_eq!(
            plain,
            "# Docker options: written by Commissaire's bootstrap.\n\
             OPTIONS='--selinux-enabled --log-driver=journald'\nDOCKER_CERT_PATH=/etc/docker\n"
        );
        let mirror = render(
            "docker.j2",
            serde_json::json!({"commissaire_docker_registry_host": "reg.example.com", "commissaire_docker_registry_port": 5000}),
        );
        assert!(
            mirror.contains(
                "OPTIONS='--selinux-enabled --log-driver=journald --registry-mirror=http://reg.example.com:5000'\n"
            ),
            "{mirror}"
        );
    }
}
