use clap::Parser;

fn main() -> anyhow::Result<()> {
    pkd::cli::run(pkd::cli::Cli::parse())
}
