//! Tests of pkd's raft storage: openraft's conformance suite, and our own checks of
//! recovery after reopening, group isolation and snapshots.

mod kv;
mod recovery;
mod suite;
