//! `netsvc`: the rack network services, standalone.

use std::process::ExitCode;

use clap::Parser;
use common::ErrorChain;
use netsvc::config::{Args, Settings};

fn fail(code: u8, msg: &str, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    tracing::error!(error = %ErrorChain(e), "{msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args = Args::parse(); // exits 2 on a usage error
    common::init_tracing();
    let settings = match Settings::load(&args) {
        Ok(s) => s,
        Err(e) => return fail(78, "invalid configuration", &e),
    };
    if args.count_leases {
        return match netsvc::count_leases(&settings) {
            Ok(n) => {
                println!("{n}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, "cannot count leases", &e),
        };
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async { Ok(netsvc::run(settings, common::shutdown_token()?).await?) })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, "netsvc failed", e.as_ref()),
    }
}
