//! Developer and CI tasks for observer: `cargo xtask <command>`.

mod bench;
mod bootstrap;
mod cmd;
mod packages;
mod test;
mod toolchain;
mod vm;
mod workspace;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test observer (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building observer needs: tracefs, the eBPF nightly, rust-src, bpf-linker
    Bootstrap {
        /// Also install the Debian packages the integration tests use
        #[arg(long)]
        tests: bool,
    },
    /// Bootstrap, then `cargo build --release --package observer`
    Build,
    /// Bootstrap, build, then run observer with ARGS (`cargo xtask run -- --help`)
    Run {
        /// Arguments for observer
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks against the real kernel (bootstrap with test packages and build first)
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Bootstrap, unit tests, build, then the privileged integration tests on this host's kernel
    /// and on each kernel of the matrix (Debian's cloud kernels under QEMU, software emulation)
    Test {
        /// Kernel series to boot under QEMU, newest Debian cloud kernel of each (see
        /// docs/kernels.md)
        #[arg(long, value_name = "SERIES,...", default_value = vm::DEFAULT_SERIES)]
        kernels: String,
        /// Run on this host's kernel only (no QEMU)
        #[arg(long, conflicts_with = "no_host")]
        host_only: bool,
        /// Skip the run on this host's kernel (only the QEMU kernels)
        #[arg(long)]
        no_host: bool,
        /// Extra libtest arguments for the integration tests (after `--`)
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Loopback connection churn on one core: no tracer, observer, tcplife (see BENCHMARKS.md)
    Churn {
        /// Seconds of churn per mode and round [default: 5]; with --paired, of the whole
        /// paired run [default: 30]
        #[arg(long)]
        seconds: Option<u64>,
        /// Rounds; each runs every mode once, in a rotating order
        #[arg(long, default_value_t = 3, conflicts_with = "paired")]
        rounds: u32,
        /// Skip tcplife (quicker A/B runs of observer against no tracer)
        #[arg(long, conflicts_with = "paired")]
        no_tcplife: bool,
        /// Instead of the rounds: one continuous run, observer paused (SIGUSR1) and resumed
        /// (SIGUSR2) in alternating windows, each attached window compared with its paused
        /// neighbour
        #[arg(long)]
        paired: bool,
        /// With --paired: the length of one measured window, in milliseconds
        #[arg(long, default_value_t = 250, requires = "paired")]
        window_ms: u64,
        /// With --paired: observer also writes to a `tcp://` output read by a consumer in
        /// xtask
        #[arg(long, requires = "paired")]
        tcp_sink: bool,
    },
    /// Records/s through each kind of output: a recorded churn replayed into a file, a
    /// `tcp://` reader, and both (see BENCHMARKS.md)
    Sinks {
        /// Seconds of churn to record
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    let task = Cli::parse().command;
    match run(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Printed by hand: anyhow's Debug output adds a backtrace under RUST_BACKTRACE=1.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Bootstrap { tests } => bootstrap::run(tests).map(drop),
        Task::Build => {
            let tools = bootstrap::run(false)?;
            let bin = workspace::build_observer(&tools)?;
            eprintln!("built {}", bin.display());
            Ok(())
        }
        Task::Run { args } => {
            let tools = bootstrap::run(false)?;
            let bin = workspace::build_observer(&tools)?;
            let mut observer = Command::new(&bin);
            observer.args(&args);
            cmd::echo(&observer);
            // exec: observer replaces xtask, so Ctrl-C and the exit code are its own.
            let err = observer.exec();
            Err(err).with_context(|| format!("could not execute {}", bin.display()))
        }
        Task::Bench {
            bench:
                Bench::Churn {
                    seconds,
                    rounds,
                    no_tcplife,
                    paired,
                    window_ms,
                    tcp_sink,
                },
        } => {
            if paired {
                bench::churn_paired(seconds.unwrap_or(30), window_ms, tcp_sink)
            } else {
                bench::churn(seconds.unwrap_or(5), rounds, !no_tcplife)
            }
        }
        Task::Bench {
            bench: Bench::Sinks { seconds },
        } => bench::sinks(seconds),
        Task::Test {
            kernels,
            host_only,
            no_host,
            args,
        } => {
            let targets = test::Targets {
                host: !no_host,
                kernels: if host_only {
                    Vec::new()
                } else {
                    vm::parse_series(&kernels)?
                },
            };
            test::run(&targets, &args)
        }
    }
}
