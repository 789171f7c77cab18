//! Building remote shell command lines without letting any value reach the shell unquoted.
//!
//! Every command the transport runs goes through a remote shell (sshd hands the exec string to
//! the login shell, and a non-root user's command is wrapped once more in `sudo -n -- sh -c`).
//! So a value from the API (an address, a user, a version, an option) must never be pasted into
//! a command string: build a [`Command`] from an argv instead, and every argument is quoted.
//! Fixed shell snippets (pipes, redirections, `&&`) written in code use [`Command::script`],
//! which takes only a `&'static str`; values are passed to it as positional parameters
//! (`"$1"`, `"$2"`, ...), never spliced into it.

use std::fmt;

/// Quote one word for a POSIX shell.
///
/// Words made only of characters no shell treats specially (`A-Z a-z 0-9 _ @ % + = : , . / -`)
/// are returned as they are; everything else is wrapped in single quotes, inside which no
/// character is special, and each `'` becomes `'\''` (close, escaped quote, reopen). The
/// empty string becomes `''`. Newlines are fine inside single quotes. A NUL byte cannot be
/// passed to a remote shell at all; the transport refuses commands that contain one.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-')
        });
    if plain {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[derive(Clone, PartialEq, Eq)]
enum Program {
    /// an argv: program name and arguments, each quoted
    Argv(String),
    /// a fixed snippet written in code, run as `sh -c SNIPPET commissaire ARGS...`
    Script(&'static str),
}

/// A remote command: an argv whose every word is quoted by [`Command::to_shell`], or a fixed
/// script from code with quoted positional arguments.
///
/// ```
/// use commissaire_services::transport::Command;
/// let version = "7.2; reboot";
/// let cmd = Command::new("rpm-ostree").arg("deploy").operand(version);
/// assert_eq!(cmd.to_shell(), "rpm-ostree deploy -- '7.2; reboot'");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    program: Program,
    args: Vec<String>,
    end_of_options: bool,
}

impl Command {
    /// A command run by name (looked up in the remote `PATH`) or by path.
    pub fn new(program: impl Into<String>) -> Self {
        Command { program: Program::Argv(program.into()), args: Vec::new(), end_of_options: false }
    }

    /// A fixed shell snippet written in code: pipes, redirections, `||`. It is `&'static str` so
    /// that no runtime value can be spliced into it; pass values with [`Command::arg`] and use
    /// them as `"$1"`, `"$2"`, ... (always in double quotes) in the snippet.
    pub fn script(snippet: &'static str) -> Self {
        Command { program: Program::Script(snippet), args: Vec::new(), end_of_options: false }
    }

    /// Append one argument (quoted when rendered).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Append an operand (a value, never an option): the first operand is preceded by `--`, so
    /// that a value such as `--reboot` cannot be taken for an option by the program. Use it for
    /// every value from the API that is not an option's argument, with programs that follow the
    /// usual `--` convention (getopt, GOption, most CLIs).
    pub fn operand(mut self, value: impl Into<String>) -> Self {
        if !self.end_of_options {
            self.args.push("--".to_owned());
            self.end_of_options = true;
        }
        self.args.push(value.into());
        self
    }

    /// The command line for a POSIX shell, every value quoted with [`shell_quote`].
    pub fn to_shell(&self) -> String {
        let mut words = match &self.program {
            Program::Argv(p) => vec![shell_quote(p)],
            Program::Script(s) if self.args.is_empty() => return (*s).to_owned(),
            // `commissaire` becomes $0; the arguments are $1, $2, ...
            Program::Script(s) => vec!["sh".to_owned(), "-c".to_owned(), shell_quote(s), "commissaire".to_owned()],
        };
        words.extend(self.args.iter().map(|a| shell_quote(a)));
        words.join(" ")
    }

    /// `true` if some part contains a NUL byte, which no shell command line can carry.
    pub fn has_nul(&self) -> bool {
        let program = match &self.program {
            Program::Argv(p) => p.as_str(),
            Program::Script(s) => s,
        };
        program.contains('\0') || self.args.iter().any(|a| a.contains('\0'))
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Command").field(&self.to_shell()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sh` makes of `echo <quoted>`: the value must come back unchanged, one word.
    fn through_sh(cmd: &Command) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.to_shell()).output().expect("run sh");
        assert!(out.status.success(), "sh failed for {:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    const HOSTILE: &[&str] = &[
        "$(reboot)",
        "`reboot`",
        "a; reboot",
        "a && reboot",
        "a | reboot",
        "it's",
        "'",
        "''",
        "'$(reboot)'",
        "a\nreboot",
        "a\r\nreboot",
        "\"$HOME\"",
        "${IFS}reboot",
        "*",
        "~root",
        "a b\tc",
        "\\",
        "\\'",
        "!",
        "#comment",
        "> /etc/passwd",
        "--reboot",
        "-rf",
        "",
        "ünïcødé ✓",
    ];

    #[test]
    fn plain_words_are_left_alone() {
        for w in ["rpm-ostree", "7.2.6", "/usr/bin/id", "key=value", "a,b:c@d%e+f_g"] {
            assert_eq!(shell_quote(w), w);
        }
    }

    #[test]
    fn quoting_is_single_quotes_with_escaped_quote() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn hostile_values_reach_the_program_unchanged() {
        for v in HOSTILE {
            // printf %s so that the value is printed as-is (echo would interpret -e, -n, \)
            let cmd = Command::new("printf").arg("%s|").arg(*v);
            assert_eq!(through_sh(&cmd), format!("{v}|"), "value {v:?} rendered as {}", cmd.to_shell());
        }
    }

    #[test]
    fn every_argument_is_a_single_word() {
        let cmd = Command::new("printf").arg("<%s>").args(HOSTILE.iter().copied());
        let expected: String = HOSTILE.iter().map(|v| format!("<{v}>")).collect();
        assert_eq!(through_sh(&cmd), expected);
    }

    #[test]
    fn hostile_program_name_is_quoted_too() {
        let cmd = Command::new("true; echo injected");
        assert_eq!(cmd.to_shell(), "'true; echo injected'");
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.to_shell()).output().expect("run sh");
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stdout).contains("injected"));
    }

    #[test]
    fn nested_quoting_survives_a_second_shell() {
        // the sudo path: sh -c <quoted command line>
        for v in HOSTILE {
            let inner = Command::new("printf").arg("%s|").arg(*v);
            let outer = Command::new("sh").arg("-c").arg(inner.to_shell());
            assert_eq!(through_sh(&outer), format!("{v}|"));
        }
    }

    #[test]
    fn operand_ends_options_once() {
        let cmd = Command::new("rpm-ostree").arg("deploy").operand("--reboot").operand("-x");
        assert_eq!(cmd.to_shell(), "rpm-ostree deploy -- --reboot -x");
        // printf treats what follows -- as operands: the format is the operand "--reboot"
        let cmd = Command::new("printf").operand("--reboot");
        assert_eq!(through_sh(&cmd), "--reboot");
    }

    #[test]
    fn script_without_args_is_verbatim_and_with_args_uses_positional_parameters() {
        assert_eq!(Command::script("uname -r | tr -d '\\n'").to_shell(), "uname -r | tr -d '\\n'");
        let cmd = Command::script("printf '%s|' \"$1\" \"$2\"").arg("$(reboot)").arg("a'b");
        assert_eq!(through_sh(&cmd), "$(reboot)|a'b|");
    }

    #[test]
    fn nul_is_detected() {
        assert!(Command::new("echo").arg("a\0b").has_nul());
        assert!(!Command::new("echo").arg("ab").has_nul());
    }
}
