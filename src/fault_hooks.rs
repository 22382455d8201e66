//! Fault-injection hooks for `pkd faults` and the fault tests, compiled in only with the
//! `fault-injection` feature (docs/faults.md): a production build has none of them.
//!
//! - A clock offset added to this node's wall clock ([`crate::clock::wall_clock`]): clock
//!   skew, set through `POST /admin/faults`.
//! - Disk faults, a slow or failing flush (`pkd_storage::faults`), set the same way.
//! - Deliberately broken behaviours, named in `PKD_FAULT_BREAK` (comma-separated) when the
//!   process starts, which the fault checkers must catch:
//!   - `gift-dedup`: every gift is counted under a fresh id, so a retried gift counts again;
//!   - `drop-results`: the results store skips every third settled PK (by id), yet the
//!     result is confirmed as stored;
//!   - `fast-clock`: the node's clock runs [`FAST_CLOCK_MS`] ahead, so its timers fire
//!     that much early in everyone else's time;
//!   - `stale-push`: in every third second of the clock, a PK state rendered for clients
//!     (pushes 10, room entries) shows the source side with half its beans, so a client
//!     sees its score fall;
//!   - `stale-cache`: the Redis cache duty never writes the end of every third PK (by
//!     id), so the cache keeps showing it running;
//!   - `double-accept`: an accept that lost its invitation to someone else (902003) is
//!     answered as if it had won (902004), so one round of invitations has two winners.
//!   - `double-pk`: the lobby's hand-over creates every third ordered PK (by id) twice on
//!     the arenas, the copy under another id ([`DOUBLE_PK_OFFSET`] more), so both its
//!     anchors are in two PKs at once;
//!   - `diverge`: a node with an even id counts one bean more for every gift it applies,
//!     so its replicas of the arenas (and the results it stores from them) part from the
//!     others' at the same log index;
//!   - `unavailable-after-restart`: a node started on a data directory it had written
//!     before answers every gift and every command 28 with `900008`, as if no leader were
//!     reachable: after a whole-cluster restart nothing moves on.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use pkd_cluster::api::FaultSettings;
use pkd_raft::{Action, ArenaAction, Command, LobbyAction, PkId, PkOrder, Reason, Response};

/// The environment variable naming the broken behaviours.
pub const BREAK_ENV: &str = "PKD_FAULT_BREAK";

static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static FRESH_GIFT_IDS: AtomicU64 = AtomicU64::new(1);
/// This node's id, and whether its data directory held groups when it started.
static NODE_ID: AtomicU64 = AtomicU64::new(0);
static RESTARTED: AtomicBool = AtomicBool::new(false);

/// How far above the ordered PK's id `double-pk` creates its copy.
pub const DOUBLE_PK_OFFSET: u64 = 1_000_000_000;

/// How far ahead `fast-clock` sets the clock, in ms.
pub const FAST_CLOCK_MS: i64 = 2_500;

/// A deliberately broken behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    GiftDedup,
    DropResults,
    FastClock,
    StalePush,
    StaleCache,
    DoubleAccept,
    DoublePk,
    Diverge,
    UnavailableAfterRestart,
}

impl Break {
    pub fn name(self) -> &'static str {
        match self {
            Break::GiftDedup => "gift-dedup",
            Break::DropResults => "drop-results",
            Break::FastClock => "fast-clock",
            Break::StalePush => "stale-push",
            Break::StaleCache => "stale-cache",
            Break::DoubleAccept => "double-accept",
            Break::DoublePk => "double-pk",
            Break::Diverge => "diverge",
            Break::UnavailableAfterRestart => "unavailable-after-restart",
        }
    }

    fn parse(name: &str) -> Option<Break> {
        [
            Break::GiftDedup,
            Break::DropResults,
            Break::FastClock,
            Break::StalePush,
            Break::StaleCache,
            Break::DoubleAccept,
            Break::DoublePk,
            Break::Diverge,
            Break::UnavailableAfterRestart,
        ]
        .into_iter()
        .find(|known| known.name() == name)
    }
}

/// The broken behaviours this process was started with (unknown names are logged and
/// ignored).
pub fn breaks() -> &'static [Break] {
    static BREAKS: OnceLock<Vec<Break>> = OnceLock::new();
    BREAKS.get_or_init(|| {
        let names = std::env::var(BREAK_ENV).unwrap_or_default();
        names
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .filter_map(|name| {
                let known = Break::parse(name);
                if known.is_none() {
                    tracing::warn!(name, "unknown broken behaviour in {BREAK_ENV}; ignored");
                }
                known
            })
            .collect()
    })
}

pub fn broken(behaviour: Break) -> bool {
    breaks().contains(&behaviour)
}

/// The offset added to this node's wall clock, in ms.
pub fn clock_offset_ms() -> i64 {
    let fast = if broken(Break::FastClock) { FAST_CLOCK_MS } else { 0 };
    CLOCK_OFFSET_MS.load(Ordering::Relaxed) + fast
}

/// The id a gift is counted under: its own, unless `gift-dedup` is broken.
pub fn gift_id(id: u64) -> u64 {
    if !broken(Break::GiftDedup) {
        return id;
    }
    // A fresh id in the top bits keeps it unique and within 1..=i64::MAX.
    let fresh = FRESH_GIFT_IDS.fetch_add(1, Ordering::Relaxed) & 0x3fff_ffff;
    (fresh << 32) | (id & 0xffff_ffff)
}

/// Whether the results store must skip this settled PK (`drop-results`).
pub fn drops_result(pk: u64) -> bool {
    broken(Break::DropResults) && pk % 3 == 0
}

/// The source side's beans as a state rendered at `now_ms` shows them (`stale-push`).
pub fn shown_beans(beans: i64, now_ms: i64) -> i64 {
    if broken(Break::StalePush) && (now_ms / 1_000) % 3 == 0 { beans / 2 } else { beans }
}

/// Whether the cache duty must leave this PK's end unwritten (`stale-cache`).
pub fn skips_cached_end(pk: u64) -> bool {
    broken(Break::StaleCache) && pk % 3 == 0
}

/// The lobby's answer to a command 28 as its reply tells it: an accept taken by someone
/// else (902003) is told as won (902004) if `double-accept` is broken.
pub fn told_response(action: &LobbyAction, response: Response) -> Response {
    match (action, response) {
        (LobbyAction::Accept { inviter, invitee }, Response::Rejected(Reason::InvitationTaken))
            if broken(Break::DoubleAccept) =>
        {
            Response::Matched { pk: PkId(0), source: *inviter, target: *invitee }
        }
        (_, response) => response,
    }
}

/// Tells the hooks which node this process is, and whether its data directory held
/// groups when it started (a restart) or not (a first start).
pub fn node_started(node: u64, first_start: bool) {
    NODE_ID.store(node, Ordering::Relaxed);
    RESTARTED.store(!first_start, Ordering::Relaxed);
}

/// The copy of a PK order `double-pk` creates as well, if any.
pub fn doubled_order(order: &PkOrder) -> Option<PkOrder> {
    (broken(Break::DoublePk) && order.pk.0 % 3 == 0)
        .then(|| PkOrder { pk: PkId(order.pk.0 + DOUBLE_PK_OFFSET), ..order.clone() })
}

/// The command as this node applies it: with `diverge` on a node with an even id, a
/// gift counts one bean more.
pub fn applied(command: &Command) -> std::borrow::Cow<'_, Command> {
    let even = NODE_ID.load(Ordering::Relaxed) % 2 == 0;
    match &command.action {
        Action::Arena(ArenaAction::Gift(gift)) if even && broken(Break::Diverge) => {
            let mut gift = gift.clone();
            gift.beans += 1;
            std::borrow::Cow::Owned(Command { at: command.at, action: Action::Arena(ArenaAction::Gift(gift)) })
        }
        _ => std::borrow::Cow::Borrowed(command),
    }
}

/// Whether this node must answer clients' gifts and commands 28 as unavailable
/// (`unavailable-after-restart` on a restarted node).
pub fn refuses_clients() -> bool {
    broken(Break::UnavailableAfterRestart) && RESTARTED.load(Ordering::Relaxed)
}

/// Applies the settings given (the others stay) and answers the settings in force.
pub fn apply(settings: &FaultSettings) -> FaultSettings {
    if let Some(offset) = settings.clock_offset_ms {
        CLOCK_OFFSET_MS.store(offset, Ordering::Relaxed);
        tracing::warn!(offset_ms = offset, "fault injection: clock offset set");
    }
    if let Some(delay) = settings.flush_delay_ms {
        pkd_storage::faults::set_flush_delay(Duration::from_millis(delay));
        tracing::warn!(delay_ms = delay, "fault injection: flush delay set");
    }
    if let Some(fails) = settings.flush_fails {
        pkd_storage::faults::set_flush_fails(fails);
        tracing::warn!(fails, "fault injection: failing flushes set");
    }
    current()
}

/// The settings in force.
pub fn current() -> FaultSettings {
    let (delay, fails) = pkd_storage::faults::disk_faults();
    FaultSettings {
        clock_offset_ms: Some(CLOCK_OFFSET_MS.load(Ordering::Relaxed)),
        flush_delay_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
        flush_fails: Some(fails),
        breaks: breaks().iter().map(|behaviour| behaviour.name().to_owned()).collect(),
    }
}
