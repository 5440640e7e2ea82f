//! `image-builder`: build golden images from templates.

fn main() -> std::process::ExitCode {
    common::init_tracing();
    std::process::ExitCode::SUCCESS
}
