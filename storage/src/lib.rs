//! Durable storage for pkd's raft groups (sled). Filled in by the replication work.
