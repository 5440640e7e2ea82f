//! `imager`: the deploy ramdisk's PID 1 (`run`, the default) and, installed on the target as
//! `provisioner-imager`, the first-boot enrolment (`enrol`). See `provisioner::imager`.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use provisioner::imager::{self, Args, Console, ImagerCommand};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // As PID 1 a usage error must not exit: fall back to the environment /init exported.
        Err(err) if std::process::id() == 1 => {
            eprintln!("{err}");
            Args::try_parse_from(["imager"]).unwrap_or_else(|e| e.exit())
        }
        Err(err) => err.exit(),
    };
    common::init_tracing();
    let console = Console::stdout();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return imager::fatal(&console, &err, 1),
    };
    match args.command.unwrap_or_default() {
        ImagerCommand::Run => match args.settings() {
            Ok(settings) => rt.block_on(imager::run(settings, console)),
            Err(err) => imager::fatal(&console, &err, 2),
        },
        ImagerCommand::Enrol => {
            let console = console.also_device(Path::new("/dev/console"));
            rt.block_on(imager::enrol_command(&console))
        }
    }
}
