//! The `adaptserve` binary: arguments → config → telemetry → `app::run`, or one of
//! the lab's tools.

use std::process::ExitCode;

mod cli;

use adaptserve_core::{model, shutdown, telemetry};
use adaptserve_server::app;
use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, ServeArgs};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Serve(_) | Command::Train(_) | Command::Simulate(_) | Command::Eval(_)
    ) {
        app::ensure_single_threaded_kernels();
    }
    telemetry::init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::InitModel(a) => {
            model::init_model(a.input_dim, a.num_classes, &a.hidden, a.seed, &a.output)
                .map(|c| {
                    println!(
                        "wrote a fresh FP16 model ({} → {:?} → {}) to {}",
                        c.input_dim,
                        c.hidden,
                        c.num_classes,
                        a.output.display()
                    )
                })
                .map_err(anyhow::Error::from)
        }
        Command::Quantize(a) => model::quantize(&a.input, &a.output)
            .map(|report| println!("{report}"))
            .map_err(anyhow::Error::from),
        Command::TrainDefault(a) => adaptserve_lab::train_default_model(&a.output, a.seed)
            .map(|report| println!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Simulate(a) => match adaptserve_lab::simulate::simulate(a) {
            // A failed check is the simulation's verdict, already printed: exit 1.
            Ok(false) => return ExitCode::FAILURE,
            Ok(true) => Ok(()),
            // The run itself could not happen (no server, no output dir): 2, so a
            // workflow can tell a broken setup from a failed check.
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        Command::Eval(a) => adaptserve_lab::eval::eval(a),
        Command::Train(a) => train(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("adaptserve-rt")
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let addr = config.bind_addr()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        app::run(config, listener, shutdown::signal()).await
    })
}

fn train(args: cli::TrainArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("adaptserve-train")
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(adaptserve_cluster::trainer::run(config, shutdown::signal()))
}
