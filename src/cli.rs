//! The `pkd` command line: one clap-derive definition, dispatched from `main`.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pkd_cluster::AdminClient;
use pkd_cluster::api::{ClusterStatus, GroupKind, InitRequest};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tokens::{login, rtm};

#[derive(Debug, Parser)]
#[command(name = "pkd", version, about = "PK battles for live-streaming apps")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing buys nothing
pub enum Command {
    /// Run a node: the raft groups, the WebSocket gateway and the gift API.
    Serve(crate::serve::ServeArgs),
    /// Work with the app's `t_config` rows.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mint tokens, for development and for checking a login service's output.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage a cluster through a node's admin API.
    Cluster(ClusterArgs),
    /// Write a backup of every group, read from a running node, to a file.
    Backup(BackupArgs),
    /// Seed a new node's empty data directory from a backup file (or describe the file).
    Restore(RestoreArgs),
    /// Load a cluster (local or running) through the app's interfaces and summarize it
    /// (docs/bench.md).
    Bench(crate::bench::BenchArgs),
    /// A seeded fault test against a local cluster: a workload, a nemesis, checkers on
    /// the history, and a report folder (docs/faults.md).
    Faults(crate::faults::FaultsArgs),
    /// Many seeded fault runs in seconds, each against nodes in this process: link faults
    /// per pair and per group, restarts, disk faults, the same checkers (docs/faults.md).
    #[cfg(feature = "fault-injection")]
    FaultsInProcess(crate::faults::inproc::InProcessArgs),
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The admin API of any node, e.g. 127.0.0.1:7800.
    #[arg(long, env = "PKD_ADMIN", default_value = "127.0.0.1:7800")]
    pub admin: String,
    /// The admin token.
    #[arg(long, env = "PKD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Speak HTTPS to an admin API started with --tls-cert, trusting the CA in this PEM file.
    #[arg(long, env = "PKD_ADMIN_CA")]
    pub ca: Option<PathBuf>,
    /// The file to write (written whole, then renamed into place).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// Print what the file holds and stop.
    #[arg(long)]
    pub describe: bool,
    /// The new node's data directory; it must be empty or absent.
    #[arg(long, env = "PKD_DATA_DIR", required_unless_present = "describe")]
    pub data_dir: Option<PathBuf>,
    /// The new node's id.
    #[arg(long, env = "PKD_NODE_ID", required_unless_present = "describe")]
    pub node_id: Option<u64>,
    /// Every member of the new cluster, `1=127.0.0.1:7700,2=127.0.0.2:7700,...` (their
    /// node-to-node addresses, as in `pkd serve --peers`); the same on every node. Without
    /// it the node runs alone.
    #[arg(long)]
    pub members: Option<String>,
    /// How far the new cluster's PK ids skip ahead of the backup's last one; more than the
    /// number of PKs the old cluster may have created after the backup.
    #[arg(long, default_value_t = crate::backup::DEFAULT_PK_ID_GAP)]
    pub pk_id_gap: u64,
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The admin API of any node, e.g. 127.0.0.1:7800.
    #[arg(long, env = "PKD_ADMIN", global = true, default_value = "127.0.0.1:7800")]
    pub admin: String,
    /// The admin token.
    #[arg(long, env = "PKD_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Speak HTTPS to an admin API started with --tls-cert, trusting the CA in this PEM file.
    #[arg(long, env = "PKD_ADMIN_CA", global = true)]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make the given nodes the voters of every group of a fresh cluster (nodes started
    /// with --join).
    Init {
        /// Every member: `1=127.0.0.1:7700,2=127.0.0.2:7700,...` (node-to-node addresses).
        #[arg(long)]
        members: String,
    },
    /// Add a node to every group as a learner; returns once it has caught up.
    AddLearner {
        #[arg(long)]
        node: u64,
        /// The node's node-to-node address.
        #[arg(long)]
        addr: String,
    },
    /// Make a learner a voter in every group.
    Promote {
        #[arg(long)]
        node: u64,
    },
    /// Take a node out of every group.
    Remove {
        #[arg(long)]
        node: u64,
    },
    /// Place a group's leadership on a node: it stays there (and comes back there after a
    /// failure) until placed elsewhere or `balance` is run.
    TransferLeader {
        #[arg(long)]
        group: u64,
        #[arg(long)]
        to: u64,
    },
    /// Clear every leader placement: leaders are spread over the nodes again.
    Balance,
    /// Drain node N and stop it, as SIGTERM does: it refuses new connections, hands the
    /// groups it leads to other nodes, tells its clients to reconnect elsewhere, then
    /// exits. `--admin` must be node N's admin API.
    Drain {
        #[arg(long)]
        node: u64,
    },
    /// Print the whole cluster: every node (unreachable ones marked) with its gateway
    /// figures, and every group with its leader, term, log positions on each node,
    /// members and lag. The node named by --admin asks the others.
    Status {
        /// Print the JSON of `GET /admin/cluster` instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Set a `t_config` row in every group.
    SetConfig { key: String, value: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a `t_config` value the way the engine will read it, before you set it
    /// (`KEY VALUE`), or a settings file for `pkd serve` (`--file PATH`). Prints what it
    /// yields, or exactly why it is refused.
    Check {
        /// pk_enable, pk_duration, pk_config, pk_filter_country, version_control or pk_limits.
        #[arg(required_unless_present = "file")]
        key: Option<String>,
        /// The value, in the row's own format, e.g. "1500,300000,0,600000".
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// A settings file of `pkd serve` (TOML) to check instead.
        #[arg(long, conflicts_with_all = ["key", "value"])]
        file: Option<std::path::PathBuf>,
    },
    /// Print a commented settings file for `pkd serve --config`, every setting at its
    /// default.
    Init,
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
        Command::Bench(args) => crate::bench::run(args),
        Command::Faults(args) => crate::faults::run(args),
        #[cfg(feature = "fault-injection")]
        Command::FaultsInProcess(args) => crate::faults::inproc::command(args),
        Command::Backup(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(backup(args))
        }
        Command::Restore(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(restore(args))
        }
        Command::Cluster(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(cluster(args))
        }
        Command::Config(ConfigCommand::Init) => {
            print!("{}", crate::config_file::starting_file());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file: Some(path), .. }) => check_settings_file(&path),
        Command::Config(ConfigCommand::Check { key: Some(key), value: Some(value), file: None }) => {
            let config = pkd_raft::config::check_row(&key, &value).map_err(anyhow::Error::msg)?;
            println!("{key} is valid; with it the engine runs with:\n{config:#?}");
            Ok(())
        }
        Command::Config(ConfigCommand::Check { .. }) => bail!("give a KEY and a VALUE, or --file"),
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

/// An admin client of `address`: HTTPS trusting the CA in `ca` if given, plain HTTP without.
fn admin_client(address: String, token: String, ca: Option<&std::path::Path>) -> anyhow::Result<AdminClient> {
    let client = AdminClient::new(address, token);
    Ok(match ca {
        Some(ca) => client.with_tls(std::sync::Arc::new(crate::tls::client_config(ca)?)),
        None => client,
    })
}

async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let Some(token) = args.token else {
        bail!("set --token (PKD_ADMIN_TOKEN): the admin API wants its bearer token");
    };
    let client = admin_client(args.admin, token, args.ca.as_deref())?.with_timeout(std::time::Duration::from_secs(600));
    let bytes = client.backup().await?;
    // Checked before it is written: a file that is there is a file that restores.
    let backup = crate::backup::Backup::decode(&bytes).context("the node sent a backup that does not read back")?;
    let partial = args.out.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::File::open(&partial)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", partial.display()))?;
    std::fs::rename(&partial, &args.out).with_context(|| format!("renaming to {}", args.out.display()))?;
    print!("{}", backup.describe());
    println!("wrote {} ({} bytes)", args.out.display(), bytes.len());
    Ok(())
}

async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let backup = crate::backup::Backup::decode(&bytes).with_context(|| format!("reading {}", args.from.display()))?;
    print!("{}", backup.describe());
    if args.describe {
        return Ok(());
    }
    let (Some(data_dir), Some(node)) = (args.data_dir, args.node_id) else {
        bail!("give --data-dir and --node-id");
    };
    let members = match &args.members {
        Some(members) => crate::serve::parse_members("--members", members)?,
        None => BTreeMap::from([(node, String::new())]),
    };
    crate::backup::restore(&backup, &data_dir, node, &members, args.pk_id_gap).await?;
    println!(
        "seeded {} for node {node} of members {:?}; start it with `pkd serve` and the same --node-id, --arenas {}{}",
        data_dir.display(),
        members.keys().collect::<Vec<_>>(),
        backup.arenas,
        if args.members.is_some() { " and --peers set to the members" } else { "" }
    );
    Ok(())
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let Some(token) = args.token.clone() else {
        bail!("set --token (PKD_ADMIN_TOKEN): the admin API wants its bearer token");
    };
    let client = admin_client(args.admin.clone(), token, args.ca.as_deref())?;
    let done = |groups: Vec<u64>| println!("done in groups {groups:?}");
    match args.command {
        ClusterCommand::Init { members } => {
            let members = crate::serve::parse_members("--members", &members)?;
            done(client.init(&InitRequest { members }).await?.groups);
        }
        ClusterCommand::AddLearner { node, addr } => done(client.add_learner(node, addr).await?.groups),
        ClusterCommand::Promote { node } => done(client.promote(node).await?.groups),
        ClusterCommand::Remove { node } => done(client.remove(node).await?.groups),
        ClusterCommand::TransferLeader { group, to } => {
            let reply = client.transfer_leader(group, to).await?;
            match reply.leader {
                Some(leader) if leader == to => println!("group {group} is led by node {leader}"),
                other => println!("asked; group {group} is still led by {other:?}"),
            }
        }
        ClusterCommand::SetConfig { key, value } => done(client.set_config(&key, &value).await?.groups),
        ClusterCommand::Balance => done(client.balance().await?.groups),
        ClusterCommand::Drain { node } => {
            client.drain(node).await?;
            println!("node {node} is draining; it stops once its groups have other leaders");
        }
        ClusterCommand::Status { json: true } => {
            println!("{}", serde_json::to_string_pretty(&client.cluster().await?)?)
        }
        ClusterCommand::Status { json: false } => print!("{}", cluster_table(&client.cluster().await?)),
    }
    Ok(())
}

/// Checks a settings file as `pkd serve --config` would read it: every key known, every
/// value valid together with the environment's `PKD_*` variables.
fn check_settings_file(path: &std::path::Path) -> anyhow::Result<()> {
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: crate::serve::ServeArgs,
    }
    let pairs = crate::config_file::read(path)?;
    let mut argv = vec!["pkd".to_owned()];
    for (env, value) in &pairs {
        // Variables set in the environment win over the file, as in `pkd serve`.
        if std::env::var_os(env).is_some() {
            continue;
        }
        let setting = crate::config_file::settings().into_iter().find(|setting| &setting.env == env);
        if let Some(setting) = setting {
            if setting.flag {
                if value == "true" {
                    argv.push(format!("--{}", setting.name));
                }
            } else {
                argv.push(format!("--{}={value}", setting.name));
            }
        }
    }
    let serve = Serve::try_parse_from(&argv).map_err(|error| anyhow::anyhow!("{error}"))?;
    let config = serve.args.app_config()?;
    println!(
        "{} is valid: node {}, {} arenas, data in {}",
        path.display(),
        config.node.node_id,
        config.node.arena_count,
        config.node.data_dir.display()
    );
    Ok(())
}

/// Gives `pkd serve` the settings of its `--config` file (or `PKD_CONFIG`) as `PKD_*`
/// variables, where the environment does not set them already. Call it before parsing
/// the command line, while the process has one thread.
pub fn load_settings_file() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = crate::config_file::path_in(&args) else { return Ok(()) };
    for (env, value) in crate::config_file::read(std::path::Path::new(&path))? {
        if std::env::var_os(&env).is_none() {
            // SAFETY: called from `main` before the runtime or any other thread starts, so
            // nothing reads the environment meanwhile.
            unsafe { std::env::set_var(&env, &value) };
        }
    }
    Ok(())
}

/// The cluster as two tables: the nodes, then the groups (log positions as each node
/// holds them, lag as the leader sees it).
pub fn cluster_table(cluster: &ClusterStatus) -> String {
    let optional = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |value| value.to_string());
    let list = |ids: &[u64]| {
        if ids.is_empty() { "-".to_owned() } else { ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",") }
    };
    let asked = cluster.node(cluster.asked).and_then(|node| node.report.as_ref());
    let connected = asked.map(|report| list(&report.status.connected)).unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "node {} (connected to: {connected}) asked every member; a node that did not answer is marked unreachable\n\n",
        cluster.asked
    );
    out.push_str(&format!(
        "{:<5} {:<11} {:>4} {:>11} {:>10} {:>6} {:>9} {:>4} {:>8}  {}\n",
        "node", "state", "led", "connections", "pushes", "drops", "gifts", "pks", "matching", "connected to"
    ));
    let groups: Vec<u64> = cluster
        .reports()
        .flat_map(|report| report.status.groups.iter().map(|group| group.id))
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .collect();
    let leaders: BTreeMap<u64, Option<u64>> = groups.iter().map(|&group| (group, cluster.leader(group))).collect();
    for node in &cluster.nodes {
        let led = leaders.values().filter(|leader| **leader == Some(node.node)).count();
        match &node.report {
            Some(report) => {
                let state = if report.draining { "draining" } else { "up" };
                let g = &report.gateway;
                out.push_str(&format!(
                    "{:<5} {:<11} {:>4} {:>11} {:>10} {:>6} {:>9} {:>4} {:>8}  {}\n",
                    node.node,
                    state,
                    led,
                    g.connections,
                    g.pushes,
                    g.slow_drops,
                    g.gifts,
                    report.pks_running,
                    report.matching,
                    list(&report.status.connected)
                ));
            }
            None => out.push_str(&format!(
                "{:<5} {:<11} {:>4}  {}\n",
                node.node,
                "UNREACHABLE",
                led,
                node.error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    let reporting: Vec<u64> = cluster.reports().map(|report| report.status.node).collect();
    out.push_str(&format!(
        "\n{:<6} {:<6} {:<7} {:>5}  {:<9} {:<9} {:<14} {}\n",
        "group",
        "kind",
        "leader",
        "term",
        "voters",
        "learners",
        "lag",
        reporting.iter().map(|id| format!("n{id} commit/applied")).collect::<Vec<_>>().join("  ")
    ));
    for &group in &groups {
        let leader = leaders.get(&group).copied().flatten();
        let views: Vec<_> = cluster.reports().filter_map(|report| report.status.group(group)).collect();
        let Some(any) = views.first() else { continue };
        let led = leader.and_then(|leader| cluster.node(leader)).and_then(|node| node.report.as_ref());
        let led = led.and_then(|report| report.status.group(group)).unwrap_or(any);
        let kind = match led.kind {
            GroupKind::Lobby => "lobby",
            GroupKind::Arena => "arena",
        };
        let lag: Vec<String> = led.replication.iter().map(|member| format!("{}:{}", member.node, member.lag)).collect();
        let positions: Vec<String> = reporting
            .iter()
            .map(|id| {
                let view = cluster.node(*id).and_then(|node| node.report.as_ref()).and_then(|r| r.status.group(group));
                let text =
                    view.map_or("-".to_owned(), |v| format!("{}/{}", optional(v.committed), optional(v.applied)));
                format!("{text:<18}")
            })
            .collect();
        out.push_str(&format!(
            "{:<6} {:<6} {:<7} {:>5}  {:<9} {:<9} {:<14} {}\n",
            group,
            kind,
            optional(leader),
            led.term,
            list(&led.voters),
            list(&led.learners),
            if lag.is_empty() { "-".to_owned() } else { lag.join(" ") },
            positions.join("  ").trim_end()
        ));
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
