//! `commctl`: see `commctl --help` and docs/commctl.md.

use std::process::ExitCode;

use clap::CommandFactory;
use commctl::{
    cli::{Cli, Command},
    commands::{self, Ctx},
    error::Error,
};

fn generated(command: &Command) -> Option<Result<(), Error>> {
    match command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "commctl", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            Some(Ok(()))
        }
        Command::Man { dir } => Some(match dir {
            Some(dir) => std::fs::create_dir_all(dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
                .map_err(|e| Error::Local(format!("cannot write the man pages into {}: {e}", dir.display()))),
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(Cli::command())
                    .render(&mut page)
                    .map_err(|e| Error::Local(format!("cannot write the man page: {e}")))
                    .map(|()| {
                        use std::io::Write;
                        let _ = std::io::stdout().write_all(&page);
                    })
            }
        }),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = match commctl::cli::parse_from(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if let Some(result) = generated(&cli.command) {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("commctl: error: {err}");
                ExitCode::from(err.exit_code())
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("commctl: error: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx::new(cli.output, cli.config.clone());
    match runtime.block_on(commands::run(&ctx, cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            match &err {
                Error::Unreachable { tried, last } => {
                    eprintln!("commctl: error: no server could be reached ({last}). Tried:");
                    for url in tried {
                        eprintln!("- {url}");
                    }
                }
                Error::Usage(message) => {
                    eprintln!("commctl: error: {message}");
                    eprintln!("For more information, try '--help'.");
                }
                other => eprintln!("commctl: error: {other}"),
            }
            ExitCode::from(err.exit_code())
        }
    }
}
