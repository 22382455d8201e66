//! The `pkd` command line: one clap-derive definition, dispatched from `main`.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pkd_raft::{Config, ConfigKey};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tokens::{login, rtm};

#[derive(Debug, Parser)]
#[command(name = "pkd", version, about = "PK battles for live-streaming apps")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: the raft groups, the WebSocket gateway and the gift API.
    Serve(crate::serve::ServeArgs),
    /// Work with the app's `t_config` rows.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint tokens, for development and for checking a login service's output.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a `t_config` value the way the engine will read it, before you set it.
    /// Prints the settings it yields, or exactly why it is refused.
    Check {
        /// pk_enable, pk_duration, pk_config, pk_filter_country, version_control or pk_limits.
        key: String,
        /// The value, in the row's own format, e.g. "1500,300000,0,600000".
        value: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a login token (the app's login service does this in production).
    Login {
        #[arg(long, env = "PKD_LOGIN_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long)]
        user: String,
        /// Seconds until it expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long)]
        country: Option<String>,
        /// android or ios.
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        client_version: Option<u32>,
    },
    /// Verify a login token and print its claims.
    VerifyLogin {
        #[arg(long, env = "PKD_LOGIN_SECRET", hide_env_values = true)]
        secret: String,
        token: String,
    },
    /// Mint an RTM token (AccessToken2) as command 27 returns it.
    Rtm {
        #[arg(long, env = "PKD_RTM_APP_ID")]
        app_id: String,
        #[arg(long, env = "PKD_RTM_APP_CERTIFICATE", hide_env_values = true)]
        app_certificate: String,
        #[arg(long)]
        user: String,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 600)]
        ttl: u32,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args),
        Command::Config(ConfigCommand::Check { key, value }) => {
            if ConfigKey::from_name(&key).is_none() {
                let known: Vec<&str> = ConfigKey::ALL.iter().map(|k| k.name()).collect();
                bail!("unknown key {key}; the keys are {}", known.join(", "));
            }
            let config = Config::default().with(&key, &value)?;
            println!("{key} is valid; with it the engine runs with:\n{config:#?}");
            Ok(())
        }
        Command::Token(TokenCommand::Login { secret, user, ttl, country, platform, client_version }) => {
            let claims = login::Claims {
                user_id: login::UserId::new(user)?,
                expires_at_ms: now_ms() + ttl * 1000,
                country: country.as_deref().map(login::CountryCode::new).transpose()?,
                platform: platform.as_deref().map(str::parse).transpose()?,
                client_version,
            };
            println!("{}", login::mint(secret.as_bytes(), &claims));
            Ok(())
        }
        Command::Token(TokenCommand::VerifyLogin { secret, token }) => {
            let claims = login::verify(secret.as_bytes(), &token, now_ms()).context("token refused")?;
            println!("{claims:#?}");
            Ok(())
        }
        Command::Token(TokenCommand::Rtm { app_id, app_certificate, user, ttl }) => {
            let issued_at = u32::try_from(now_ms() / 1000).context("the clock is past 2106")?;
            // The salt only needs to differ between tokens minted in the same second.
            let salt = (now_ms() % 99_999_999) as u32 + 1;
            let token = rtm::build(&rtm::RtmTokenRequest {
                app_id: &app_id,
                app_certificate: &app_certificate,
                user_id: &user,
                issued_at,
                salt,
                expire_seconds: ttl,
            })?;
            println!("{token}");
            Ok(())
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
