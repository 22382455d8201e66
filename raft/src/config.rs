//! The engine's run-time configuration: the app's five `t_config` rows in their
//! original formats, plus pkd's own `pk_limits` row.
//!
//! A config change is a command in the log (`SetConfig { key, value }`), so every
//! replica switches at the same log position. The raw text is parsed when the command
//! is applied; a value that does not parse is refused and changes nothing.

use crate::pseudo_json::{self, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Upper bound for any duration in the config: one day. Larger values are typos.
const MAX_DURATION_MS: i64 = 24 * 60 * 60 * 1000;

/// All settings the core reads. `Default` holds the production values of the source
/// document (its deployment section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `pk_enable`: false stops new matching and new PKs; running PKs finish.
    pub enabled: bool,
    /// `pk_duration`.
    pub timing: PkTiming,
    /// `pk_config`.
    pub matching: MatchingConfig,
    /// `pk_filter_country`.
    pub country_filter: CountryFilter,
    /// The `pk` entry of `version_control`.
    pub versions: VersionGate,
    /// `pk_limits` (pkd's own row).
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            timing: PkTiming { opening_ms: 1_500, battle_ms: 300_000, ending_ms: 0, rtm_token_validity_ms: 600_000 },
            matching: MatchingConfig {
                name: "匹配赛".to_string(),
                intervening_ms: 120_000,
                give_up_ms: 600_000,
                invite_count: 10,
                invite_cooldown_ms: 1_800_000,
            },
            country_filter: CountryFilter::parse("{'IN':['PK'],'PK':['IN']}")
                .expect("the built-in country filter parses"),
            versions: VersionGate::parse("{pk:[{'vc':207,'p':'android'}]}").expect("the built-in version gate parses"),
            limits: Limits::default(),
        }
    }
}

/// `pk_duration`: `opening,battle,ending[,rtmTokenValidity]` in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkTiming {
    /// The opening phase (animations) before gifts count.
    pub opening_ms: i64,
    /// The battle: gifts count.
    pub battle_ms: i64,
    /// The after-battle stage (t_pk status 4); 0 for none.
    pub ending_ms: i64,
    /// How long an RTM token from command 27 stays valid. The 3-value form of the row
    /// leaves it out; it then defaults to 600000 (the source's production value).
    pub rtm_token_validity_ms: i64,
}

impl PkTiming {
    pub fn parse(text: &str) -> Result<PkTiming, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if !(3..=4).contains(&parts.len()) {
            return Err(format!(
                "expected 3 or 4 comma-separated milliseconds (opening,battle,ending[,rtmTokenValidity]), found {}",
                parts.len()
            ));
        }
        let mut values = [0i64, 0, 0, 600_000];
        let names = ["opening", "battle", "ending", "rtmTokenValidity"];
        for (i, part) in parts.iter().enumerate() {
            let value: i64 =
                part.parse().map_err(|_| format!("{} is not a whole number of milliseconds: '{part}'", names[i]))?;
            check_duration(names[i], value)?;
            values[i] = value;
        }
        if values[1] == 0 {
            return Err("battle must last longer than 0 ms".to_string());
        }
        Ok(PkTiming {
            opening_ms: values[0],
            battle_ms: values[1],
            ending_ms: values[2],
            rtm_token_validity_ms: values[3],
        })
    }
}

/// `pk_config`: the matchmaking parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchingConfig {
    /// `name`: shown to nobody, kept because the row has it.
    pub name: String,
    /// `interveningTime`: wait this long without a match before inviting anchors; a
    /// batch of invitations also lapses after this long.
    pub intervening_ms: i64,
    /// `endTime`: give up matching after this long.
    pub give_up_ms: i64,
    /// `inviteNum`: at most this many invitations per batch.
    pub invite_count: u32,
    /// `inviteColdDown`: an anchor is not invited again within this long.
    pub invite_cooldown_ms: i64,
}

impl MatchingConfig {
    pub fn parse(text: &str) -> Result<MatchingConfig, String> {
        let object = parse_object(text)?;
        let mut config = MatchingConfig {
            name: String::new(),
            intervening_ms: 0,
            give_up_ms: 0,
            invite_count: 0,
            invite_cooldown_ms: 0,
        };
        let mut seen = BTreeSet::new();
        for (key, value) in &object {
            match key.as_str() {
                "name" => match value {
                    Value::Str(s) => config.name = s.clone(),
                    other => return Err(format!("name must be a string, found {}", other.kind())),
                },
                "interveningTime" => config.intervening_ms = duration_field(key, value)?,
                "endTime" => config.give_up_ms = duration_field(key, value)?,
                "inviteColdDown" => config.invite_cooldown_ms = duration_field(key, value)?,
                "inviteNum" => {
                    let n = int_field(key, value)?;
                    if !(0..=1000).contains(&n) {
                        return Err(format!("inviteNum must be between 0 and 1000, found {n}"));
                    }
                    config.invite_count = n as u32;
                }
                // Unknown keys are kept out rather than refused: the app may add keys
                // for its own readers.
                _ => continue,
            }
            seen.insert(key.as_str());
        }
        for required in ["interveningTime", "endTime", "inviteNum", "inviteColdDown"] {
            if !seen.contains(required) {
                return Err(format!("missing {required}"));
            }
        }
        if config.give_up_ms == 0 {
            return Err("endTime must be longer than 0 ms".to_string());
        }
        if config.intervening_ms == 0 {
            return Err("interveningTime must be longer than 0 ms".to_string());
        }
        Ok(config)
    }
}

/// `pk_filter_country`: for each country, the countries its anchors must never meet.
/// Applied in both directions: a pair is refused if either side lists the other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryFilter {
    pub blocked: BTreeMap<String, BTreeSet<String>>,
}

impl CountryFilter {
    pub fn parse(text: &str) -> Result<CountryFilter, String> {
        let object = parse_object(text)?;
        let mut blocked = BTreeMap::new();
        for (country, value) in object {
            let Value::List(items) = value else {
                return Err(format!("{country} must map to a list of countries, found {}", value.kind()));
            };
            let mut set = BTreeSet::new();
            for item in items {
                match item {
                    Value::Str(other) => set.insert(other),
                    other => {
                        return Err(format!("{country}'s list holds {}, not a country", other.kind()));
                    }
                };
            }
            blocked.insert(country, set);
        }
        Ok(CountryFilter { blocked })
    }

    /// May anchors of these two countries meet?
    pub fn allows(&self, a: &str, b: &str) -> bool {
        let blocks = |x: &str, y: &str| self.blocked.get(x).is_some_and(|set| set.contains(y));
        !blocks(a, b) && !blocks(b, a)
    }

    /// The countries that the given one may meet, among `countries`.
    pub fn compatible<'a>(
        &'a self,
        country: &'a str,
        countries: impl Iterator<Item = &'a String>,
    ) -> impl Iterator<Item = &'a String> {
        countries.filter(move |other| self.allows(country, other))
    }
}

/// The `pk` entry of `version_control`: the lowest client version code per platform
/// that may match or be invited. Platforms not listed are not gated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionGate {
    pub minimum: BTreeMap<String, u32>,
}

impl VersionGate {
    pub fn parse(text: &str) -> Result<VersionGate, String> {
        let object = parse_object(text)?;
        let mut minimum = BTreeMap::new();
        // Other keys (`update`, `kickout`, ...) belong to other features of the app.
        let Some(entry) = object.get("pk") else {
            return Ok(VersionGate { minimum });
        };
        let Value::List(items) = entry else {
            return Err(format!("pk must be a list, found {}", entry.kind()));
        };
        for item in items {
            let Value::Object(rule) = item else {
                return Err(format!("pk's list holds {}, not {{'vc':..,'p':..}}", item.kind()));
            };
            let vc = match rule.get("vc") {
                Some(value) => int_field("vc", value)?,
                None => return Err("a pk rule is missing vc".to_string()),
            };
            let vc = u32::try_from(vc).map_err(|_| format!("vc out of range: {vc}"))?;
            let platform = match rule.get("p") {
                Some(Value::Str(p)) => p.clone(),
                Some(other) => return Err(format!("p must be a string, found {}", other.kind())),
                None => return Err("a pk rule is missing p".to_string()),
            };
            minimum.insert(platform, vc);
        }
        Ok(VersionGate { minimum })
    }

    /// Whether a client on `platform` at `version_code` may take part in PKs. A platform
    /// without a rule passes. While the gate has any rule, a client that does not say its
    /// platform (empty) or its version (0) is refused: an unknown client might be one the
    /// gate exists to keep out.
    pub fn allows(&self, platform: &str, version_code: u32) -> bool {
        if self.minimum.is_empty() {
            return true;
        }
        if platform.is_empty() || version_code == 0 {
            return false;
        }
        self.minimum.get(platform).is_none_or(|min| version_code >= *min)
    }
}

/// `pk_limits`: pkd's own row for limits the source does not configure.
/// Format like the others: `{'maxGiftBeans':100000000,'anchorGraceMs':30000,...}`;
/// keys left out keep their current values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `maxGiftBeans`: a single gift worth more beans than this is refused as absurd.
    pub max_gift_beans: i64,
    /// `anchorGraceMs`: an anchor away from its room this long mid-PK ends the PK
    /// abnormally (status 3).
    pub anchor_grace_ms: i64,
    /// `maxGiftsPerPk`: distinct gift ids one PK remembers for de-duplication; gifts
    /// past it are refused, so the memory is bounded.
    pub max_gifts_per_pk: u32,
    /// `topGifters`: how many top gifters per side a PK state shows.
    pub top_gifters: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_gift_beans: 100_000_000, anchor_grace_ms: 30_000, max_gifts_per_pk: 1_000_000, top_gifters: 3 }
    }
}

impl Limits {
    pub fn parse_over(mut self, text: &str) -> Result<Limits, String> {
        for (key, value) in parse_object(text)? {
            match key.as_str() {
                "maxGiftBeans" => {
                    let n = int_field(&key, &value)?;
                    if n <= 0 {
                        return Err(format!("maxGiftBeans must be positive, found {n}"));
                    }
                    self.max_gift_beans = n;
                }
                "anchorGraceMs" => self.anchor_grace_ms = duration_field(&key, &value)?,
                "maxGiftsPerPk" => {
                    let n = int_field(&key, &value)?;
                    self.max_gifts_per_pk = u32::try_from(n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(format!("maxGiftsPerPk must be between 1 and {}, found {n}", u32::MAX))?;
                }
                "topGifters" => {
                    let n = int_field(&key, &value)?;
                    if !(1..=100).contains(&n) {
                        return Err(format!("topGifters must be between 1 and 100, found {n}"));
                    }
                    self.top_gifters = n as u32;
                }
                other => return Err(format!("unknown key {other}")),
            }
        }
        Ok(self)
    }
}

/// The keys a `SetConfig` command may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigKey {
    PkEnable,
    PkDuration,
    PkConfig,
    PkFilterCountry,
    VersionControl,
    PkLimits,
}

impl ConfigKey {
    pub const ALL: [ConfigKey; 6] = [
        ConfigKey::PkEnable,
        ConfigKey::PkDuration,
        ConfigKey::PkConfig,
        ConfigKey::PkFilterCountry,
        ConfigKey::VersionControl,
        ConfigKey::PkLimits,
    ];

    /// The `t_config.name` of this key.
    pub fn name(self) -> &'static str {
        match self {
            ConfigKey::PkEnable => "pk_enable",
            ConfigKey::PkDuration => "pk_duration",
            ConfigKey::PkConfig => "pk_config",
            ConfigKey::PkFilterCountry => "pk_filter_country",
            ConfigKey::VersionControl => "version_control",
            ConfigKey::PkLimits => "pk_limits",
        }
    }

    pub fn from_name(name: &str) -> Option<ConfigKey> {
        ConfigKey::ALL.into_iter().find(|key| key.name() == name)
    }
}

/// Why a config value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl Config {
    /// The config with `key` set to `value`, or why not. `self` is unchanged either way.
    pub fn with(&self, key: &str, value: &str) -> Result<Config, ConfigError> {
        let error = |message: String| ConfigError { key: key.to_string(), message };
        let known = ConfigKey::from_name(key).ok_or_else(|| error("unknown config key".to_string()))?;
        let mut next = self.clone();
        match known {
            ConfigKey::PkEnable => {
                next.enabled = match value.trim() {
                    "true" => true,
                    "false" => false,
                    other => return Err(error(format!("expected true or false, found '{other}'"))),
                }
            }
            ConfigKey::PkDuration => next.timing = PkTiming::parse(value).map_err(error)?,
            ConfigKey::PkConfig => next.matching = MatchingConfig::parse(value).map_err(error)?,
            ConfigKey::PkFilterCountry => next.country_filter = CountryFilter::parse(value).map_err(error)?,
            ConfigKey::VersionControl => next.versions = VersionGate::parse(value).map_err(error)?,
            ConfigKey::PkLimits => next.limits = self.limits.parse_over(value).map_err(error)?,
        }
        Ok(next)
    }
}

impl Config {
    /// The `t_config` row `key` as it stands in this config, in the row's own format:
    /// `Config::default().with(key.name(), &config.row(key))` gives back the same
    /// setting. `version_control` shows its `pk` entry only (the engine keeps no other).
    pub fn row(&self, key: ConfigKey) -> String {
        match key {
            ConfigKey::PkEnable => self.enabled.to_string(),
            ConfigKey::PkDuration => {
                let t = &self.timing;
                format!("{},{},{},{}", t.opening_ms, t.battle_ms, t.ending_ms, t.rtm_token_validity_ms)
            }
            ConfigKey::PkConfig => {
                let m = &self.matching;
                format!(
                    "{{'name':{},'interveningTime':{},'endTime':{},'inviteNum':{},'inviteColdDown':{}}}",
                    quoted(&m.name),
                    m.intervening_ms,
                    m.give_up_ms,
                    m.invite_count,
                    m.invite_cooldown_ms
                )
            }
            ConfigKey::PkFilterCountry => {
                let entries: Vec<String> = self
                    .country_filter
                    .blocked
                    .iter()
                    .map(|(country, others)| {
                        let others: Vec<String> = others.iter().map(|other| quoted(other)).collect();
                        format!("{}:[{}]", quoted(country), others.join(","))
                    })
                    .collect();
                format!("{{{}}}", entries.join(","))
            }
            ConfigKey::VersionControl => {
                let rules: Vec<String> = self
                    .versions
                    .minimum
                    .iter()
                    .map(|(platform, vc)| format!("{{'vc':{vc},'p':{}}}", quoted(platform)))
                    .collect();
                format!("{{pk:[{}]}}", rules.join(","))
            }
            ConfigKey::PkLimits => {
                let l = &self.limits;
                format!(
                    "{{'maxGiftBeans':{},'anchorGraceMs':{},'maxGiftsPerPk':{},'topGifters':{}}}",
                    l.max_gift_beans, l.anchor_grace_ms, l.max_gifts_per_pk, l.top_gifters
                )
            }
        }
    }
}

/// Checks a `t_config` row the way the engine will read it: the config the value yields
/// over the defaults, or exactly why it is refused. `pkd config check`, the admin API and
/// the web console all check with this.
pub fn check_row(key: &str, value: &str) -> Result<Config, String> {
    if ConfigKey::from_name(key).is_none() {
        let known: Vec<&str> = ConfigKey::ALL.iter().map(|key| key.name()).collect();
        return Err(format!("unknown key {key}; the keys are {}", known.join(", ")));
    }
    Config::default().with(key, value).map_err(|error| error.to_string())
}

/// `text` as a single-quoted string of the rows' relaxed JSON.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.timing;
        let m = &self.matching;
        write!(
            f,
            "enabled={} timing={},{},{},{} intervene={} give_up={} invites={} cooldown={}",
            self.enabled,
            t.opening_ms,
            t.battle_ms,
            t.ending_ms,
            t.rtm_token_validity_ms,
            m.intervening_ms,
            m.give_up_ms,
            m.invite_count,
            m.invite_cooldown_ms
        )
    }
}

fn parse_object(text: &str) -> Result<BTreeMap<String, Value>, String> {
    match pseudo_json::parse(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!("expected an object {{...}}, found {}", other.kind())),
        Err(e) => Err(format!("not readable: {e}")),
    }
}

fn int_field(key: &str, value: &Value) -> Result<i64, String> {
    match value {
        Value::Int(n) => Ok(*n),
        // The Java stack wrote numbers as strings now and then.
        Value::Str(s) => s.trim().parse().map_err(|_| format!("{key} must be a whole number, found '{s}'")),
        other => Err(format!("{key} must be a whole number, found {}", other.kind())),
    }
}

fn duration_field(key: &str, value: &Value) -> Result<i64, String> {
    let n = int_field(key, value)?;
    check_duration(key, n)?;
    Ok(n)
}

fn check_duration(key: &str, value: i64) -> Result<(), String> {
    if !(0..=MAX_DURATION_MS).contains(&value) {
        return Err(format!("{key} must be between 0 and {MAX_DURATION_MS} ms, found {value}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_renders_in_its_own_format_and_reads_back() {
        let config = Config::default()
            .with(
                "pk_config",
                "{'name':'it\\'s \\\\ 匹配','interveningTime':1,'endTime':2,'inviteNum':3,'inviteColdDown':4}",
            )
            .unwrap()
            .with("pk_filter_country", "{'IN':['PK','BD'],'US':[]}")
            .unwrap()
            .with("version_control", "{pk:[{'vc':207,'p':'android'},{'vc':3,'p':'ios'}]}")
            .unwrap()
            .with("pk_limits", "{'topGifters':5}")
            .unwrap()
            .with("pk_enable", "false")
            .unwrap();
        for key in ConfigKey::ALL {
            let row = config.row(key);
            let read = Config::default().with(key.name(), &row).unwrap_or_else(|e| panic!("{row}: {e}"));
            assert_eq!(read.row(key), row);
        }
        let read_back =
            ConfigKey::ALL.iter().fold(Config::default(), |c, key| c.with(key.name(), &config.row(*key)).unwrap());
        assert_eq!(read_back, config);
        assert_eq!(Config::default().row(ConfigKey::PkDuration), "1500,300000,0,600000");
        assert_eq!(Config::default().row(ConfigKey::VersionControl), "{pk:[{'vc':207,'p':'android'}]}");
    }

    #[test]
    fn source_rows_parse() {
        let c = Config::default();
        let c = c.with("pk_duration", "1500,300000,0").unwrap();
        assert_eq!(c.timing.rtm_token_validity_ms, 600_000);
        let c = c.with("pk_duration", "1500,60000,2000,900000").unwrap();
        assert_eq!(
            c.timing,
            PkTiming { opening_ms: 1500, battle_ms: 60000, ending_ms: 2000, rtm_token_validity_ms: 900000 }
        );
        let c = c
            .with(
                "pk_config",
                "{'name':'匹配赛','interveningTime':10000,'endTime':30000,'inviteNum':10,'inviteColdDown':5000}",
            )
            .unwrap();
        assert_eq!(c.matching.intervening_ms, 10_000);
        assert_eq!(c.matching.invite_cooldown_ms, 5_000);
        let c = c
            .with("version_control", "{update:[{'vc':1,'p':'android'},{'vc':1,'p':'ios'}],kickout:[{'vc':209,'p':'android'},{'vc':172,'p':'ios'}]}")
            .unwrap();
        assert!(c.versions.minimum.is_empty(), "no pk entry: nobody is gated");
        let c = c.with("version_control", "{pk:[{'vc':207,'p':'android'}]}").unwrap();
        assert!(!c.versions.allows("android", 206));
        assert!(c.versions.allows("android", 207));
        assert!(c.versions.allows("ios", 1));
        assert!(!c.country_filter.allows("IN", "PK"));
        assert!(!c.country_filter.allows("PK", "IN"));
        assert!(c.country_filter.allows("IN", "IN"));
        let c = c.with("pk_filter_country", "{'IN':['PK']}").unwrap();
        assert!(!c.country_filter.allows("PK", "IN"), "one listing blocks both directions");
        assert!(!c.with("pk_enable", "false").unwrap().enabled);
        let c = c.with("pk_limits", "{'maxGiftBeans':500}").unwrap();
        assert_eq!(c.limits.max_gift_beans, 500);
        assert_eq!(c.limits.top_gifters, 3);
    }

    #[test]
    fn bad_rows_are_refused_with_reasons() {
        let c = Config::default();
        let cases = [
            ("pk_enable", "yes", "expected true or false"),
            ("pk_duration", "1500,300000", "expected 3 or 4"),
            ("pk_duration", "1500,-1,0", "between 0 and"),
            ("pk_duration", "1500,0,0", "longer than 0"),
            ("pk_duration", "a,1,2", "not a whole number"),
            ("pk_config", "{'interveningTime':1}", "missing endTime"),
            ("pk_config", "{'interveningTime':'x','endTime':1,'inviteNum':1,'inviteColdDown':1}", "whole number"),
            ("pk_config", "{'interveningTime':1,'endTime':1,'inviteNum':-1,'inviteColdDown':1}", "inviteNum"),
            ("pk_config", "[1]", "expected an object"),
            ("pk_filter_country", "{'IN':'PK'}", "list of countries"),
            ("version_control", "{pk:[{'p':'android'}]}", "missing vc"),
            ("version_control", "{pk:[{'vc':1,'p':'android'}", "not readable"),
            ("pk_limits", "{'maxGiftBeans':0}", "positive"),
            ("pk_limits", "{'colour':1}", "unknown key"),
            ("pk_colour", "1", "unknown config key"),
        ];
        for (key, value, wanted) in cases {
            let err = c.with(key, value).unwrap_err();
            assert!(err.message.contains(wanted), "{key}={value}: got '{}', wanted '{wanted}'", err.message);
        }
    }
}
