//! `netsvc`: the rack network services, standalone.

fn main() -> std::process::ExitCode {
    common::init_tracing();
    std::process::ExitCode::SUCCESS
}
