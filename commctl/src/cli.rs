//! The command line (clap derive). The man page and the shell completions
//! are generated from these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// Command line client of Commissaire: clusters, hosts, networks, container
/// managers and rolling cluster operations.
///
/// Configuration: `--config FILE`, else `$COMMCTL_CONFIG`, else
/// `~/.commissaire.json`: `{"endpoint": URL or [URL, …], "username": …,
/// "password": …, "kubeconfig": …, "ca_file": …}`. A missing password is asked
/// for on the terminal. Endpoints are tried in order when a connection fails.
///
/// Exit status: 0 success, 1 the server refused or could not be reached,
/// 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "commctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (default: $COMMCTL_CONFIG, else ~/.commissaire.json).
    #[arg(long, global = true, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Clusters and their rolling operations (restart, upgrade, deploy).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Container managers (OpenShift, Kubernetes, trivial).
    #[command(subcommand, name = "container_manager", visible_alias = "container-manager")]
    ContainerManager(ContainerManagerCmd),
    /// Hosts: create, inspect, join to clusters, log in.
    #[command(subcommand)]
    Host(HostCmd),
    /// Networks (flannel).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Prints a bcrypt hash of a password, for the server's users file.
    Passhash(PasshashArgs),
    /// Writes cloud-init user-data that registers new machines on first boot.
    #[command(name = "user-data")]
    UserData(UserDataArgs),
    /// Prints a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff), or writes one page per command into a directory.
    Man {
        /// Write commctl.1, commctl-cluster.1, … into this directory.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Creates a cluster.
    Create {
        name: String,
        /// Accepted for compatibility (kubernetes, host_only); the server does not use it.
        #[arg(long, short = 't', default_value = "kubernetes")]
        r#type: String,
        /// The network its hosts use.
        #[arg(long, short = 'n', default_value = "default")]
        network: String,
        /// The container manager its hosts are registered with.
        #[arg(long, short = 'c')]
        container_manager: Option<String>,
    },
    /// Deletes clusters.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Shows a cluster (members and their counts).
    Get { name: String },
    /// Lists the clusters.
    List,
    /// Rolling restart of the cluster's hosts.
    #[command(subcommand)]
    Restart(OperationCmd),
    /// Rolling upgrade of the cluster's hosts.
    #[command(subcommand)]
    Upgrade(OperationCmd),
    /// Rolling OSTree deploy of a version on the cluster's hosts.
    #[command(subcommand)]
    Deploy(DeployCmd),
}

/// The knobs of a rolling operation (all optional; the server's defaults:
/// one host at a time, stop at the first failure).
#[derive(Debug, Clone, Default, Args)]
pub struct Knobs {
    /// Hosts acted on at once: a count or a percentage ("25%").
    #[arg(long)]
    pub batch: Option<String>,
    /// Host failures tolerated before the operation fails.
    #[arg(long)]
    pub failure_budget: Option<u64>,
    /// Seconds to wait between batches.
    #[arg(long)]
    pub soak_seconds: Option<u64>,
    /// How long one host may take, in seconds.
    #[arg(long)]
    pub host_timeout_seconds: Option<u64>,
    /// Hosts of a batch must answer over SSH before the next batch starts.
    #[arg(long)]
    pub health_gate: bool,
}

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// Starts the operation.
    Start {
        name: String,
        #[command(flatten)]
        knobs: Knobs,
        /// Then follow it live until it ends.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Shows the operation's record.
    Status {
        name: String,
        /// Follow it live until it ends (exit 1 if it fails or is aborted).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Pauses it: hosts in process finish, no new host starts.
    Pause { name: String },
    /// Resumes a paused operation.
    Resume { name: String },
    /// Aborts it: hosts in process finish, nothing else starts.
    Abort { name: String },
    /// Runs it again: failed hosts are tried again, hosts not reached run too, done ones are left.
    #[command(name = "retry-failed")]
    RetryFailed {
        name: String,
        /// Then follow it live until it ends.
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeployCmd {
    /// Starts deploying VERSION.
    Start {
        name: String,
        /// The OSTree version to deploy.
        #[arg(value_name = "VERSION")]
        deploy_version: String,
        #[command(flatten)]
        knobs: Knobs,
        /// Then follow it live until it ends.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Shows the deploy's record.
    Status {
        name: String,
        /// Follow it live until it ends (exit 1 if it fails or is aborted).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Pauses it.
    Pause { name: String },
    /// Resumes it.
    Resume { name: String },
    /// Aborts it.
    Abort { name: String },
    /// Runs it again: failed hosts are tried again, hosts not reached run too, done ones are left.
    #[command(name = "retry-failed")]
    RetryFailed {
        name: String,
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Adds a host; the server then investigates and bootstraps it over SSH.
    Create {
        /// Address or name (a name is resolved to an IPv4 address).
        address: String,
        /// The private key that logs in to the host (`-` reads it from standard input).
        #[arg(value_hint = clap::ValueHint::FilePath)]
        ssh_priv_key: PathBuf,
        /// Add it to this cluster.
        #[arg(long, short = 'c')]
        cluster: Option<String>,
        /// The user the key logs in as (root, or a user with passwordless sudo).
        #[arg(long, short = 'u', default_value = "root")]
        remote_user: String,
    },
    /// Deletes hosts (also from their cluster).
    Delete {
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Shows a host.
    Get { address: String },
    /// Lists hosts (of one cluster when given).
    List { cluster: Option<String> },
    /// Shows a host's status and its container manager's view of it.
    Status { address: String },
    /// Shows the credentials the server holds for a host (the key only with --show-key).
    Creds {
        address: String,
        /// Include the private key (base64) in the output.
        #[arg(long)]
        show_key: bool,
    },
    /// Logs in to a host with the credentials the server holds.
    ///
    /// The key is written to a private temporary file (mode 0600) for the
    /// session only and removed when ssh exits (also on an error or a signal).
    /// The host key pinned by the server, when there is one, is the only one
    /// accepted. Arguments after HOST go to ssh before the destination; put a
    /// remote command after `--`. The exit status is ssh's.
    Ssh {
        host: String,
        /// Arguments for ssh, before the destination (e.g. -v -p 2222); then
        /// `-- COMMAND…` to run a command instead of a shell.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "SSH_ARGS")]
        ssh_args: Vec<String>,
        /// The command after `--` (see [`split_ssh_command`]).
        #[arg(skip)]
        command: Vec<String>,
    },
    /// Adds a host to a cluster.
    Join { address: String, cluster: String },
    /// Removes a host from a cluster.
    Unjoin { address: String, cluster: String },
}

/// Options of a network or container manager: `KEY=VALUE` or a JSON object,
/// repeatable, merged, the last wins.
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Creates a network.
    Create {
        name: String,
        /// flannel_etcd or flannel_server.
        #[arg(long, short = 't', default_value = "flannel_etcd")]
        r#type: String,
        /// An option: KEY=VALUE (true/false become booleans) or a JSON object; repeatable.
        #[arg(long = "options", short = 'O', visible_alias = "option", value_name = "KEY=VALUE|JSON")]
        options: Vec<String>,
    },
    /// Deletes networks.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Shows a network.
    Get { name: String },
    /// Lists the networks.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ContainerManagerCmd {
    /// Creates a container manager.
    Create {
        name: String,
        /// openshift, kubernetes or trivial.
        #[arg(long, short = 't', default_value = "openshift")]
        r#type: String,
        /// An option: KEY=VALUE (true/false become booleans) or a JSON object; repeatable.
        #[arg(long = "options", short = 'O', visible_alias = "option", value_name = "KEY=VALUE|JSON")]
        options: Vec<String>,
    },
    /// Deletes container managers.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Shows a container manager.
    Get { name: String },
    /// Lists the container managers.
    List,
}

#[derive(Debug, Args)]
pub struct PasshashArgs {
    /// The password (visible in the process list and shell history: prefer the prompt).
    #[arg(long, short = 'p', conflicts_with = "file")]
    pub password: Option<String>,
    /// Read the password from this file, as is (`-` = standard input).
    #[arg(long, short = 'f', value_hint = clap::ValueHint::FilePath)]
    pub file: Option<PathBuf>,
    /// bcrypt cost (4 to 31).
    #[arg(long, short = 'r', default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub rounds: u32,
}

#[derive(Debug, Args)]
pub struct UserDataArgs {
    /// The Commissaire endpoint new machines register with.
    #[arg(long, short = 'e')]
    pub endpoint: String,
    /// The cluster new machines join.
    #[arg(long, short = 'c')]
    pub cluster: Option<String>,
    /// Commissaire user the machines authenticate as.
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Ask for that user's password (it is written into the user-data).
    #[arg(long, short = 'p')]
    pub password: bool,
    /// Read that password from a file instead (first line; `-` = standard input).
    #[arg(long, conflicts_with = "password", value_hint = clap::ValueHint::FilePath)]
    pub password_file: Option<PathBuf>,
    /// The user Commissaire logs in as on the machines.
    #[arg(long, short = 'r', default_value = "root")]
    pub remote_user: String,
    /// Where the machine keeps its key for Commissaire (generated on first boot if missing).
    #[arg(long, short = 's', default_value = "/root/.ssh/id_commissaire")]
    pub ssh_key_path: String,
    /// The remote user's authorized_keys file.
    #[arg(long, short = 'a', default_value = "/root/.ssh/authorized_keys")]
    pub authorized_keys_path: String,
    /// A public key file to install for the operator (cloud-config ssh_authorized_keys); repeatable.
    #[arg(long, short = 'k', value_hint = clap::ValueHint::FilePath)]
    pub authorized_key: Vec<PathBuf>,
    /// A cloud-config file used instead of the built-in one.
    #[arg(long = "cloud-init", short = 'C', value_hint = clap::ValueHint::FilePath)]
    pub cloud_init: Option<PathBuf>,
    /// Register this address instead of the one the server sees the request come from.
    #[arg(long)]
    pub address: Option<String>,
    /// Send the registration from this local address (curl --interface).
    #[arg(long)]
    pub source_address: Option<String>,
    /// A CA bundle (PEM) the machines trust for an HTTPS endpoint.
    #[arg(long, value_hint = clap::ValueHint::FilePath)]
    pub ca_file: Option<PathBuf>,
    /// Output file (default: standard output); created with mode 0600.
    #[arg(long, short = 'O', visible_alias = "outfile", value_hint = clap::ValueHint::FilePath)]
    pub out: Option<PathBuf>,
}

/// Splits `commctl … host … ssh HOST [SSH_ARGS…] -- COMMAND…` at its `--`:
/// the arguments for clap, and the remote command. (clap would take the `--`
/// as its own end of options and mix the command into the ssh arguments.)
pub fn split_ssh_command(args: Vec<std::ffi::OsString>) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let host = args.iter().position(|a| a == "host");
    let ssh = host.and_then(|h| args.iter().skip(h + 1).position(|a| a == "ssh").map(|p| p + h + 1));
    let separator = ssh.and_then(|s| args.iter().skip(s + 2).position(|a| a == "--").map(|p| p + s + 2));
    match separator {
        Some(i) => {
            let command = args[i + 1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
            (args[..i].to_vec(), command)
        }
        None => (args, Vec::new()),
    }
}

/// Parses the command line (with [`split_ssh_command`]).
pub fn parse_from(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let (args, remote) = split_ssh_command(args);
    let mut cli = Cli::try_parse_from(args)?;
    if let Command::Host(HostCmd::Ssh { command, .. }) = &mut cli.command {
        *command = remote;
    }
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_ssh_takes_ssh_options_and_a_command_after_the_separator() {
        let parse = |args: &[&str]| parse_from(args.iter().map(Into::into).collect()).expect("parses");
        let cli =
            parse(&["commctl", "host", "ssh", "h1", "-v", "-p", "2222", "-o", "LogLevel=ERROR", "--", "ls", "--", "x"]);
        match cli.command {
            Command::Host(HostCmd::Ssh { host, ssh_args, command }) => {
                assert_eq!(host, "h1");
                assert_eq!(ssh_args, ["-v", "-p", "2222", "-o", "LogLevel=ERROR"]);
                assert_eq!(command, ["ls", "--", "x"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.output, Format::Table);
        match parse(&["commctl", "host", "ssh", "h1", "--", "hostname"]).command {
            Command::Host(HostCmd::Ssh { ssh_args, command, .. }) => {
                assert!(ssh_args.is_empty());
                assert_eq!(command, ["hostname"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        let err = Cli::try_parse_from(["commctl", "cluster", "frobnicate"]).expect_err("unknown");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["commctl", "passhash", "-r", "99"]).expect_err("range");
        assert_eq!(err.exit_code(), 2);
    }
}
