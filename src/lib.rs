//! pkd: the PK engine. The shell around the pure core (`pkd_raft`): the command line,
//! tokens, and — as the work goes on — replication, the WebSocket gateway and the
//! result sinks.

pub mod cli;
pub mod sinks;
pub mod tokens;
