use clap::Parser;

fn main() -> anyhow::Result<()> {
    pkd::cli::load_settings_file()?;
    pkd::cli::run(pkd::cli::Cli::parse())
}
