//! What a simulated host answers to a command line: pure, no IO.
//!
//! The product sends a small, fixed set of commands (the watcher's `true`, the
//! investigator's facts script, the native playbook engine's stat / copy /
//! package / service / reboot snippets, the cluster operations' boot id and
//! `rpm-ostree` calls), either as an argv, as a fixed script, or as
//! `sh -c SCRIPT commissaire ARGS...`, possibly inside `sudo -n -- sh -c ...`.
//! Each is recognised here and answered the way a Fedora, CentOS or Debian
//! host (optionally OSTree-booted) would; anything else is "command not
//! found" (exit 127), as a shell would say.

/// What a simulated host is, as far as its answers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    pub hostname: String,
    pub os: Os,
    pub ostree: bool,
    pub boot_id: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub space_bytes: u64,
}

/// The distribution a simulated host reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Fedora,
    Centos,
    Debian,
}

impl Os {
    pub fn parse(name: &str) -> Option<Os> {
        match name {
            "fedora" => Some(Os::Fedora),
            "centos" => Some(Os::Centos),
            "debian" => Some(Os::Debian),
            _ => None,
        }
    }

    fn os_release(self) -> &'static str {
        match self {
            Os::Fedora => {
                "NAME=\"Fedora Linux\"\nVERSION=\"40 (Server Edition)\"\nID=fedora\nVERSION_ID=40\n\
                 PRETTY_NAME=\"Fedora Linux 40 (Server Edition)\"\n"
            }
            Os::Centos => {
                "NAME=\"CentOS Stream\"\nVERSION=\"9\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"9\"\n\
                 PRETTY_NAME=\"CentOS Stream 9\"\n"
            }
            Os::Debian => {
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n\
                 VERSION=\"12 (bookworm)\"\nID=debian\n"
            }
        }
    }

    fn id(self) -> &'static str {
        match self {
            Os::Fedora => "fedora",
            Os::Centos => "centos",
            Os::Debian => "debian",
        }
    }

    fn package_manager(self) -> &'static str {
        match self {
            Os::Fedora | Os::Centos => "dnf",
            Os::Debian => "apt-get",
        }
    }
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
}

impl Reply {
    fn ok(stdout: impl Into<String>) -> Reply {
        Reply { stdout: stdout.into(), ..Reply::default() }
    }
    fn fail(status: u32, stderr: impl Into<String>) -> Reply {
        Reply { stderr: stderr.into(), status, ..Reply::default() }
    }
}

/// What the host does with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer and stay up.
    Reply(Reply),
    /// Answer, then go down for a reboot (`shutdown -r`).
    Reboot(Reply),
}

/// The answer of `host` to the command line `line` (the bytes of an SSH `exec`).
pub fn respond(line: &str, host: &HostView) -> Action {
    let words = split(line);
    // sudo -n -- sh -c LINE: what runs is LINE
    if let Some(words) = &words
        && words.first().map(String::as_str) == Some("sudo")
        && let Some(c) = words.iter().position(|w| w == "-c")
        && let Some(inner) = words.get(c + 1)
    {
        return respond(inner, host);
    }
    // sh -c SCRIPT $0 ARGS...: a fixed snippet with positional parameters
    if let Some(words) = &words
        && words.len() >= 3
        && words[0] == "sh"
        && words[1] == "-c"
    {
        let args: Vec<&str> = words.iter().skip(4).map(String::as_str).collect();
        return script(&words[2], &args, host);
    }
    if let Some(action) = known_script(line, &[], host) {
        return action;
    }
    match words {
        Some(words) if !words.is_empty() => Action::Reply(argv(&words, host)),
        _ => Action::Reply(Reply::fail(2, format!("sh: syntax error in {line:?}\n"))),
    }
}

fn script(text: &str, args: &[&str], host: &HostView) -> Action {
    match known_script(text, args, host) {
        Some(action) => action,
        None => match split(text) {
            Some(words) if !words.is_empty() => Action::Reply(argv(&words, host)),
            _ => Action::Reply(Reply::fail(2, "sh: syntax error\n")),
        },
    }
}

/// The fixed snippets of the product, recognised by what they do.
fn known_script(text: &str, args: &[&str], host: &HostView) -> Option<Action> {
    let arg = |i: usize| args.get(i).copied().unwrap_or("");
    let reply = |r: Reply| Some(Action::Reply(r));
    if text.contains("random/boot_id") {
        return reply(Reply::ok(format!("{}\n", host.boot_id)));
    }
    if text.contains("os-release") && text.contains("nproc") {
        return reply(Reply::ok(format!(
            "os={}\ncpus={}\nmemory={}\nspace={}\n",
            host.os.id(),
            host.cpus,
            host.memory_mb,
            host.space_bytes
        )));
    }
    if text.contains("shutdown\" -r") || text.starts_with("shutdown -r") || text.starts_with("reboot") {
        return Some(Action::Reboot(Reply::ok("")));
    }
    if text.contains("stat -c '%F|") {
        return reply(stat(arg(0), host));
    }
    if text.contains("then echo dir; elif [ -f") {
        // copy's probe: nothing the product writes is there before
        return reply(Reply::ok("missing\n"));
    }
    if text.contains("mktemp") {
        return reply(Reply::ok(format!("{}.commissaire-a1b2c3", arg(0))));
    }
    if text.contains("base64 -d >>") || text.contains("mv -f --") || text.starts_with("chmod -- \"$2\"") {
        return reply(Reply::ok(""));
    }
    if text.contains("mkdir -p") {
        return reply(Reply::ok("exists\n755\n"));
    }
    if text.contains("command -v") {
        return reply(Reply::ok(format!("{}\n", host.os.package_manager())));
    }
    None
}

fn stat(path: &str, host: &HostView) -> Reply {
    match path {
        "/run/ostree-booted" if host.ostree => Reply::ok("regular empty file|0|644|0|0\n"),
        "/etc" | "/etc/sysconfig" | "/etc/default" | "/run" | "/" => Reply::ok("directory|4096|755|0|0\n"),
        "/etc/os-release" => Reply::ok(format!("regular file|{}|644|0|0\n", host.os.os_release().len())),
        _ => Reply::ok("missing\n"),
    }
}

/// A command given as words.
fn argv(words: &[String], host: &HostView) -> Reply {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    // `env VAR=... PROGRAM ARGS`: what runs is PROGRAM
    if w[0] == "env" {
        let rest: Vec<String> = words.iter().skip(1).skip_while(|a| a.contains('=')).cloned().collect();
        return if rest.is_empty() { Reply::ok("") } else { argv(&rest, host) };
    }
    match w.as_slice() {
        ["true"] | [":"] => Reply::ok(""),
        ["false"] => Reply::fail(1, ""),
        ["whoami"] => Reply::ok("root\n"),
        ["hostname"] => Reply::ok(format!("{}\n", host.hostname)),
        ["uname", "-r"] => Reply::ok("6.8.9-300.fc40.x86_64\n"),
        ["cat", "/etc/os-release"] => Reply::ok(host.os.os_release()),
        ["cat", "/proc/sys/kernel/random/boot_id"] => Reply::ok(format!("{}\n", host.boot_id)),
        ["rpm", "-q", ..] if host.os != Os::Debian => {
            Reply::ok(format!("install ok installed 1.0.0-1.{}\n", if host.os == Os::Fedora { "fc40" } else { "el9" }))
        }
        ["dpkg-query", ..] if host.os == Os::Debian => Reply::ok("install ok installed 1.0.0-1\n"),
        ["dnf" | "yum", ..] if host.os != Os::Debian && !host.ostree => Reply::ok("Complete!\n"),
        ["apt-get", ..] if host.os == Os::Debian => Reply::ok("Done\n"),
        ["systemctl", "is-enabled", _] => Reply::ok("enabled\n"),
        ["systemctl", "is-active", _] => Reply::ok("active\n"),
        ["systemctl", ..] => Reply::ok(""),
        ["rpm-ostree", "status", ..] if host.ostree => Reply::ok(ostree_status(host)),
        ["rpm-ostree", "upgrade"] if host.ostree => {
            Reply::ok("Staging deployment... done\nRun \"systemctl reboot\" to start a reboot\n")
        }
        ["rpm-ostree", "deploy", "--", version] if host.ostree => {
            Reply::ok(format!("Validating checksum '{version}'\nStaging deployment... done\n"))
        }
        ["chmod" | "rm" | "mkdir" | "chown" | "mv", ..] => Reply::ok(""),
        [program, ..] => Reply::fail(127, format!("sh: {program}: command not found\n")),
        [] => Reply::ok(""),
    }
}

fn ostree_status(host: &HostView) -> String {
    format!(
        "State: idle\nDeployments:\n● fedora:fedora/40/x86_64/iot\n                  Version: 40.20241101.0 ({})\n",
        host.boot_id.get(..8).unwrap_or("")
    )
}

/// POSIX shell word splitting for the quoting the product produces (single
/// quotes, double quotes, backslashes). `None` when the line uses anything
/// else a word splitter cannot take apart (unbalanced quotes).
pub fn split(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
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
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostView {
        HostView {
            hostname: "sim-1".into(),
            os: Os::Fedora,
            ostree: false,
            boot_id: "0f5e4d3c-2b1a-4098-8765-43210fedcba9".into(),
            cpus: 4,
            memory_mb: 7953,
            space_bytes: 107_374_182_400,
        }
    }

    fn reply(line: &str, host: &HostView) -> Reply {
        match respond(line, host) {
            Action::Reply(r) => r,
            Action::Reboot(_) => panic!("{line} rebooted"),
        }
    }

    #[test]
    fn splits_the_quoting_the_product_uses() {
        assert_eq!(
            split("sh -c 'a \"$1\"' commissaire 'it'\\''s'"),
            Some(vec!["sh".into(), "-c".into(), "a \"$1\"".into(), "commissaire".into(), "it's".into()])
        );
        assert_eq!(split("echo \"a\\\"b\" c\\ d"), Some(vec!["echo".into(), "a\"b".into(), "c d".into()]));
        assert_eq!(split("echo 'open"), None);
    }

    #[test]
    fn the_watcher_check_and_facts() {
        let h = host();
        assert_eq!(reply("true", &h), Reply::ok(""));
        let facts = reply(
            r#". /etc/os-release 2>/dev/null; echo "os=$ID"; echo "cpus=$(nproc)"; awk '/^MemTotal:/ {printf "memory=%d\n", $2 / 1024}' /proc/meminfo"#,
            &h,
        );
        assert_eq!(facts.stdout, "os=fedora\ncpus=4\nmemory=7953\nspace=107374182400\n");
        // the same through sudo, as for a user other than root
        assert_eq!(
            reply("sudo -n -- sh -c 'cat /proc/sys/kernel/random/boot_id'", &h).stdout,
            format!("{}\n", h.boot_id)
        );
    }

    #[test]
    fn reboot_and_ostree() {
        let mut h = host();
        let shutdown = "sh -c 'for d in /sbin; do if [ -x \"$d/shutdown\" ]; then exec \"$d/shutdown\" -r 0 \"$1\"; fi; done' commissaire 'Reboot initiated by Commissaire'";
        assert_eq!(respond(shutdown, &h), Action::Reboot(Reply::ok("")));
        let stat = "sh -c 'if [ -e \"$1\" ] || [ -L \"$1\" ]; then stat -c '\\''%F|%s|%a|%u|%g'\\'' -- \"$1\"; else echo missing; fi' commissaire /run/ostree-booted";
        assert_eq!(reply(stat, &h).stdout, "missing\n");
        h.ostree = true;
        assert!(reply(stat, &h).stdout.starts_with("regular empty file|"));
        assert_eq!(reply("rpm-ostree upgrade", &h).status, 0);
    }

    #[test]
    fn packages_and_unknown_commands() {
        let h = host();
        assert_eq!(reply("rpm -q --qf 'install ok installed %{VERSION}-%{RELEASE}\\n' flannel", &h).status, 0);
        assert_eq!(reply("dnf -y install flannel", &h).stdout, "Complete!\n");
        assert_eq!(reply("systemctl is-enabled docker", &h).stdout, "enabled\n");
        let unknown = reply("frobnicate --now", &h);
        assert_eq!((unknown.status, unknown.stderr.as_str()), (127, "sh: frobnicate: command not found\n"));
    }
}
