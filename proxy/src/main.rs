//! The `remora` binary: Envoy's command line in front of the server.
#![forbid(unsafe_code)]

use clap::Parser;
use remora::cli::{Command, Options};
use remora::logging::LogControl;

fn main() {
    let mut options = Options::parse();
    if options.version {
        println!("remora version: {}/RELEASE (Envoy API v3)", remora::VERSION);
        return;
    }
    if let Some(Command::Iptables(flags)) = &options.command {
        std::process::exit(remora_iptables::main(flags));
    }
    if let Some(Command::Certs { action }) = &options.command {
        std::process::exit(remora::cli::run_certs(action));
    }
    let logs = match LogControl::init(
        &options.log_level,
        options.component_log_level.as_deref(),
        options.log_path.as_deref(),
        options.log_format.as_deref(),
        options.log_format_escaped,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    remora::logging::install_panic_hook(logs.config_version());
    if let Some(Command::Demo { port, admin_port }) = options.command.clone() {
        let upstream = match remora::demo::spawn_echo() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: cannot start the demo echo server: {e}");
                std::process::exit(1);
            }
        };
        options.config_path = None;
        options.config_yaml = Some(remora::demo::demo_bootstrap(
            port,
            admin_port,
            upstream.port(),
        ));
        println!("{}", remora::demo::instructions(port, admin_port));
    }
    std::process::exit(remora::server::run(options, logs));
}
