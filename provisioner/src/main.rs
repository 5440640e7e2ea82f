//! `provisioner`: the control-node daemon (`serve`) and its CLI. Exit codes: see `--help`.

use std::process::ExitCode;

use clap::Parser;
use provisioner::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse(); // Usage errors exit 2 here.
    common::init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!(
                "error: failed to start the async runtime: {}",
                common::ErrorChain(&err)
            );
            return ExitCode::from(cli::EXIT_OTHER);
        }
    };
    match args.command {
        #[cfg(feature = "lab")]
        Command::Lab(lab) => cli::lab(lab, args.global.json),
        Command::Serve(serve) => match serve.settings() {
            Ok(settings) => rt.block_on(cli::serve(settings)),
            Err(err) => {
                eprintln!("error: {}", common::ErrorChain(&err));
                ExitCode::from(cli::EXIT_CONFIG)
            }
        },
        command => rt.block_on(cli::run(args.global, command)),
    }
}
