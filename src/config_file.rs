//! `pkd serve`'s settings from a TOML file, beside flags and `PKD_*` variables, with the
//! same names: the file's `node-id = 2` is `--node-id 2` and `PKD_NODE_ID=2`.
//!
//! A flag wins over a variable, and a variable over the file. The file is read before the
//! command line is parsed, and each of its settings is given to the parser as the
//! setting's variable unless that variable is already set, so the file goes through the
//! same checks as everything else. A key that names no setting is an error, not a silent
//! no-op.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;

use crate::serve::ServeArgs;

/// Every setting of `pkd serve`: its long name, its variable, its help and its default.
#[derive(Clone, Debug)]
pub struct Setting {
    pub name: String,
    pub env: String,
    pub help: String,
    pub default: Option<String>,
    pub flag: bool,
}

/// The settings `pkd serve` takes, in the order `--help` lists them.
pub fn settings() -> Vec<Setting> {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    Serve::command()
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_long()?.to_owned();
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let default = arg.get_default_values().first().map(|value| value.to_string_lossy().into_owned());
            let flag = matches!(arg.get_action(), clap::ArgAction::SetTrue);
            Some(Setting { name, env, help, default, flag })
        })
        .collect()
}

/// The file's settings as (variable, value), checked against [`settings`].
pub fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses a settings file's text.
pub fn parse(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: BTreeMap<String, toml::Value> = toml::from_str(text)?;
    let known: BTreeMap<String, Setting> =
        settings().into_iter().map(|setting| (setting.name.clone(), setting)).collect();
    let mut pairs = Vec::new();
    for (key, value) in table {
        let Some(setting) = known.get(&key) else {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            bail!("unknown setting {key:?}; the settings are {}", names.join(", "));
        };
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            other => bail!("{key}: expected a string, a number or true/false, found {}", other.type_str()),
        };
        pairs.push((setting.env.clone(), value));
    }
    Ok(pairs)
}

/// The path of the settings file named by `--config FILE`, `--config=FILE` or `PKD_CONFIG`
/// among `args` (the whole command line).
pub fn path_in(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().cloned();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_owned());
        }
    }
    std::env::var("PKD_CONFIG").ok()
}

/// A commented starting file: every setting with its help, at its default (commented out
/// where there is none).
pub fn starting_file() -> String {
    let mut text = String::from(
        "# pkd serve's settings. Each key is the flag's name; a flag or a PKD_* variable wins over\n\
         # this file. Check a file with `pkd config check --file <path>`.\n",
    );
    for setting in settings() {
        if setting.name == "config" {
            continue;
        }
        text.push('\n');
        for line in setting.help.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        text.push_str(&format!("# (variable {})\n", setting.env));
        match (&setting.default, setting.flag) {
            (_, true) => text.push_str(&format!("# {} = true\n", setting.name)),
            (Some(default), false) => match default.parse::<i64>() {
                Ok(number) => text.push_str(&format!("{} = {number}\n", setting.name)),
                Err(_) => text.push_str(&format!("{} = {:?}\n", setting.name, default)),
            },
            (None, false) => text.push_str(&format!("# {} = \"\"\n", setting.name)),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_flags_names_and_values_become_their_variables() {
        let pairs = parse("node-id = 2\nlisten = \"127.0.0.2:7600\"\ndev-auth = true\n").unwrap();
        assert_eq!(
            pairs,
            [
                ("PKD_DEV_AUTH".to_owned(), "true".to_owned()),
                ("PKD_LISTEN".to_owned(), "127.0.0.2:7600".to_owned()),
                ("PKD_NODE_ID".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[test]
    fn unknown_keys_and_tables_are_refused() {
        let unknown = parse("node_id = 2\n").unwrap_err().to_string();
        assert!(unknown.contains("unknown setting \"node_id\""), "{unknown}");
        let table = parse("[listen]\nhost = 1\n").unwrap_err().to_string();
        assert!(table.contains("listen: expected"), "{table}");
        assert!(parse("node-id = ").is_err(), "not TOML");
    }

    #[test]
    fn the_starting_file_parses_and_names_every_setting() {
        let text = starting_file();
        let pairs = parse(&text).unwrap();
        assert!(pairs.iter().any(|(env, value)| env == "PKD_ARENAS" && value == "4"), "{pairs:?}");
        for setting in settings().iter().filter(|setting| setting.name != "config") {
            assert!(text.contains(&format!("{} = ", setting.name)), "{} missing", setting.name);
        }
    }

    #[test]
    fn the_file_is_found_on_the_command_line() {
        let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(path_in(&args(&["pkd", "serve", "--config", "a.toml"])), Some("a.toml".to_owned()));
        assert_eq!(path_in(&args(&["pkd", "serve", "--config=b.toml"])), Some("b.toml".to_owned()));
    }
}
