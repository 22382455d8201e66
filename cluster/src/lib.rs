//! Cluster administration for pkd: admin API types, client and local launcher. Filled in by the replication work.
