//! The WebSocket gateway: how app clients talk to pkd.
//!
//! - [`protocol`]: the wire format as pure functions. Text frames become typed
//!   [`protocol::ClientMessage`]s or answerable [`protocol::ProtocolError`]s;
//!   replies and push effects become JSON text in the exact shape the app's
//!   existing clients read. `docs/protocol.md` documents every message.
//!
//! The server itself (axum, WebSocket sessions, authentication, forwarding to
//! the raft groups, push fan-out) will live next to it and uses `protocol` for
//! every byte it reads or writes.

pub mod protocol;
