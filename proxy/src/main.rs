//! `outrider-proxy`: parse flags, build the runtimes, run the app, drain on signal.
use std::process::ExitCode;

use clap::Parser;
use outrider_proxy::{app::App, app::Signals, config::Cli, config::Command, iptables};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Iptables(args)) => return iptables::run(&args),
        Some(Command::Node(args)) => return outrider_proxy::node::api::run(args),
        None => {}
    }
    let config = match cli.proxy.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outrider-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let log = outrider_proxy::telemetry::log::init(config.log_format);
    // JSON access-log lines on stdout go out in batches. Declared before the runtime, so it is
    // dropped after it, on every return below (a drained exit, a failed start): its drop
    // writes the lines still pending, those of requests cut off by the runtime's end included.
    let _access_log = (config.access_log && outrider_proxy::telemetry::log::json_on_stdout())
        .then(|| outrider_proxy::telemetry::stdout::start(config.access_log_flush_interval))
        .flatten();
    // One worker: a current-thread runtime (no work-stealing bookkeeping).
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = match builder.thread_name("outrider-data").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outrider-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        // Before anything listens: a SIGTERM right after the proxy starts serving drains it.
        let signals = Signals::register();
        let app = match App::build(config, log).await {
            Ok(app) => app,
            Err(e) => {
                // Once, on stderr (not also as a log line): it is the last thing the process says.
                eprintln!("outrider-proxy: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        app.run_until_signal(signals).await
    })
}
