//! `provisioner`: the control-node daemon and its CLI.

fn main() -> std::process::ExitCode {
    common::init_tracing();
    std::process::ExitCode::SUCCESS
}
