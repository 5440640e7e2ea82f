//! `image-builder`: build golden images from templates.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = image_builder::Args::parse();
    common::init_tracing();
    match image_builder::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %common::ErrorChain(&e), "build failed");
            eprintln!("image-builder: {}", common::ErrorChain(&e));
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
