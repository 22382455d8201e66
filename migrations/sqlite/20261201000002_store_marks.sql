-- Facts about this node's own results store, by name (SQLite only: each node keeps its
-- own store there; the shared MySQL store has none). `complete` says the store holds
-- every settled PK of the cluster: a founding node's from its first start, a node that
-- joined a running cluster once it has copied the results settled before it joined
-- from a member (see src/duties/backfill.rs).

CREATE TABLE IF NOT EXISTS pkd_store_marks (
  `name` VARCHAR(64) PRIMARY KEY,
  `value` VARCHAR(255) NOT NULL,
  `update_time` DATETIME DEFAULT NULL
);
