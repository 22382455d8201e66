//! Tokens pkd issues or checks.
//!
//! - [`rtm`]: RTM tokens in Agora's AccessToken2 ("007") format, handed to
//!   co-hosting anchors by command 27 so an RTM service can verify them.
//! - [`login`]: the app's login tokens, which a WebSocket connection presents
//!   to say which user it acts for.
//!
//! Both are pure functions of their inputs: the current time and any salt are
//! arguments, never read from a clock or a random source here.

pub mod login;
pub mod rtm;
