//! `equikern`: e3nn-exact Clebsch–Gordan tensor products from the command line.

mod bench;
mod bench_model;
mod conformance_cmd;
mod conv;
mod emit;
mod engine;
mod error;
mod info;
mod model;
mod npy;
mod suite;
mod tp;

use clap::{Parser, Subcommand};
use error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "equikern",
    version,
    about = "e3nn-exact Clebsch–Gordan tensor products"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    Tp(Box<tp::TpArgs>),
    Conv(Box<conv::ConvArgs>),
    Info(info::InfoArgs),
    Emit(emit::EmitArgs),
    Suite(suite::SuiteArgs),
    Bench(Box<bench::BenchArgs>),
    Conformance(conformance_cmd::ConformanceArgs),
    Eval(Box<model::EvalArgs>),
    Md(Box<model::MdArgs>),
}

/// Any panic is a bug; still give the user one line, not a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error (please report): {}{at}",
            msg.replace('\n', " ")
        );
        std::process::exit(101);
    }));
}

fn main() {
    install_panic_hook();
    // Lets the tests check the hook: no subcommand can be made to panic on purpose.
    if std::env::var_os("EQUIKERN_CLI_TEST_PANIC").is_some() {
        panic!("forced by EQUIKERN_CLI_TEST_PANIC\nsecond line");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // bare `equikern`: the help is the useful answer
            let _ = e.print();
            std::process::exit(error::EXIT_INPUT);
        }
        Err(e) => {
            // clap's message is several paragraphs (usage, tips); the first names the flag.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("error: {first} (see --help)");
            std::process::exit(error::EXIT_INPUT);
        }
    };
    let result: Result<(), CliError> = match &cli.cmd {
        Cmd::Tp(a) => tp::run(a),
        Cmd::Conv(a) => conv::run(a),
        Cmd::Info(a) => info::run(a),
        Cmd::Emit(a) => emit::run(a),
        Cmd::Suite(a) => suite::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Conformance(a) => conformance_cmd::run_cmd(a),
        Cmd::Eval(a) => model::run_eval(a),
        Cmd::Md(a) => model::run_md(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.code);
    }
}
