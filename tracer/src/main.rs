use std::process::ExitCode;

use clap::Parser;
use offheap::{cli::Cli, commands};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        // Milliseconds: the debug log times attach's phases.
        .format_timestamp_millis()
        // aya warns on every load that `inflight` (task-local storage) has
        // no aya type, although the loader is told to allow it. Its one
        // other warning there (object BTF not loadable) ends in a load error
        // that says as much.
        .filter_module("aya::bpf", log::LevelFilter::Error)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let help = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if !e.use_stderr() || help {
                let _ = e.print();
                let code = if e.use_stderr() {
                    offheap::error::EXIT_USAGE
                } else {
                    0
                };
                return ExitCode::from(code);
            }
            // Bad arguments: one line, as every error (README).
            eprintln!("{}", offheap::cli::one_line_error(&e));
            return ExitCode::from(offheap::error::EXIT_USAGE);
        }
    };
    if let offheap::cli::Command::Watch(args) = &cli.command {
        commands::watch::before_runtime(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("offheap: error: starting the async runtime: {e}");
            return ExitCode::from(offheap::error::EXIT_START);
        }
    };
    match runtime.block_on(commands::dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("offheap: error: {e:#}");
            ExitCode::from(offheap::error::exit_code(&e))
        }
    }
}
