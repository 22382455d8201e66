//! The answer to each command, and the reply codes the app understands.

use crate::ids::{PkId, UserId};
use serde::{Deserialize, Serialize};

/// What a command did. Refusals are data, never panics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Done; nothing more to say.
    Done,
    /// Nothing to do: a timer not due or no longer scheduled, a hand-over already
    /// applied. Safe to deliver twice or late.
    Ignored,
    /// Start: nobody suitable waits; the anchor is queued.
    Waiting,
    /// Start or accept: two anchors meet in PK `pk`.
    Matched {
        pk: PkId,
        source: UserId,
        target: UserId,
    },
    /// A gift is counted (`duplicate`: it had been already; counted once).
    GiftCounted {
        duplicate: bool,
        side_beans: i64,
    },
    Rejected(Reason),
}

impl Response {
    /// The reply code of command 28 and the gift API: "000000" success, the source's
    /// 902004 / 902003 / 905033, and pkd's own codes for every other refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Response::Matched { .. } => "902004",
            Response::Rejected(reason) => reason.code(),
            _ => "000000",
        }
    }
}

/// Why a command was refused. Every reason has its own code; see docs/protocol.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// 902003: the inviter already met someone (another invitee accepted, or a match).
    InvitationTaken,
    /// 905033: the anchor has a PK that has not ended.
    AnchorBusy,
    /// 902001: `pk_enable` is false.
    PkDisabled,
    /// 902002: the client's version is below `version_control`'s `pk` minimum.
    VersionTooOld,
    /// 902005: the anchor is matching already.
    AlreadyMatching,
    /// 902006: the anchor is not matching.
    NotMatching,
    /// 902007: no such invitation.
    NoSuchInvitation,
    /// 902008: the inviter stopped matching, gave up or went off air.
    InvitationWithdrawn,
    /// 902009: the invitation's batch lapsed.
    InvitationExpired,
    /// 902010: `pk_filter_country` forbids this pair.
    CountryFiltered,
    /// 902011: this invitation was answered already.
    AlreadyAnswered,
    /// 902012: the invitee is not live.
    NotLive,
    /// 905040: no running PK with that id here.
    NoSuchPk,
    /// 905041: gifts count only during the battle.
    NotInBattle,
    /// 905042: the receiver is not an anchor of this PK.
    NotASide,
    /// 905043: beans must be positive.
    BeansNotPositive,
    /// 905044: more beans than `pk_limits.maxGiftBeans` in one gift.
    BeansTooLarge,
    /// 905045: the PK holds `pk_limits.maxGiftsPerPk` gifts already.
    TooManyGifts,
    /// 905046: the sum would overflow.
    BeansOverflow,
    /// 900010: a config value that does not parse (the message says why).
    InvalidConfig(String),
    /// 900011: the action or timer belongs to the other kind of group. The types keep
    /// pkd's own callers from sending one; only a corrupted or misrouted message can.
    WrongGroup,
}

impl Reason {
    pub fn code(&self) -> &'static str {
        match self {
            Reason::InvitationTaken => "902003",
            Reason::AnchorBusy => "905033",
            Reason::PkDisabled => "902001",
            Reason::VersionTooOld => "902002",
            Reason::AlreadyMatching => "902005",
            Reason::NotMatching => "902006",
            Reason::NoSuchInvitation => "902007",
            Reason::InvitationWithdrawn => "902008",
            Reason::InvitationExpired => "902009",
            Reason::CountryFiltered => "902010",
            Reason::AlreadyAnswered => "902011",
            Reason::NotLive => "902012",
            Reason::NoSuchPk => "905040",
            Reason::NotInBattle => "905041",
            Reason::NotASide => "905042",
            Reason::BeansNotPositive => "905043",
            Reason::BeansTooLarge => "905044",
            Reason::TooManyGifts => "905045",
            Reason::BeansOverflow => "905046",
            Reason::InvalidConfig(_) => "900010",
            Reason::WrongGroup => "900011",
        }
    }

    /// A short English description for the reply's `desc`.
    pub fn describe(&self) -> String {
        match self {
            Reason::InvitationTaken => "invitation already accepted by someone else".into(),
            Reason::AnchorBusy => "the anchor has a PK that has not ended".into(),
            Reason::PkDisabled => "PK is switched off".into(),
            Reason::VersionTooOld => "client version too old for PK".into(),
            Reason::AlreadyMatching => "already matching".into(),
            Reason::NotMatching => "not matching".into(),
            Reason::NoSuchInvitation => "no such invitation".into(),
            Reason::InvitationWithdrawn => "the inviter withdrew the invitation".into(),
            Reason::InvitationExpired => "the invitation expired".into(),
            Reason::CountryFiltered => "these anchors may not meet".into(),
            Reason::AlreadyAnswered => "the invitation was already answered".into(),
            Reason::NotLive => "the anchor is not live".into(),
            Reason::NoSuchPk => "no running PK".into(),
            Reason::NotInBattle => "gifts count only during the battle".into(),
            Reason::NotASide => "the receiver is not in this PK".into(),
            Reason::BeansNotPositive => "beans must be positive".into(),
            Reason::BeansTooLarge => "too many beans in one gift".into(),
            Reason::TooManyGifts => "this PK has taken its maximum number of gifts".into(),
            Reason::BeansOverflow => "bean total out of range".into(),
            Reason::InvalidConfig(message) => format!("invalid config: {message}"),
            Reason::WrongGroup => "command sent to the wrong group".into(),
        }
    }
}
