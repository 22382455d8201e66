-- The PK results tables in SQLite's dialect: the same tables, column names and unique
-- keys as migrations/mysql (see the notes there), for the embedded default store.
-- Differences forced by SQLite: no column comments, no MySQL collations, index names
-- are per schema (they are already unique), `id` is an INTEGER PRIMARY KEY (64-bit).
-- DATETIME columns hold UTC text, 'YYYY-MM-DD HH:MM:SS.sss' for start_time/end_time
-- and 'YYYY-MM-DD HH:MM:SS' for create_time/update_time, as MySQL prints them.

CREATE TABLE IF NOT EXISTS t_pk (
  `id` INTEGER PRIMARY KEY,
  `type` TINYINT DEFAULT 1,             -- 1: two-room PK
  `status` TINYINT DEFAULT 1,           -- 1 running, 2 ended, 3 ended abnormally, 4 after-battle stage
  `sequel_type` TINYINT DEFAULT 1,      -- 0: no sequel
  `sequel_content` VARCHAR(128) DEFAULT NULL,
  `interfered` TINYINT DEFAULT 1,       -- 0 matched, 1 made by invitation
  `start_time` DATETIME DEFAULT NULL,
  `end_time` DATETIME DEFAULT NULL,
  `duration` INT DEFAULT 0,             -- ms
  `source_user` INT NOT NULL,
  `source_toom` INT NOT NULL,           -- the source anchor's room (the original name)
  `source_gifts` BIGINT NOT NULL DEFAULT 0,
  `source_audience` INT NOT NULL DEFAULT 0,
  `target_user` INT NOT NULL,
  `target_room` INT NOT NULL,
  `target_gifts` BIGINT NOT NULL DEFAULT 0,
  `target_audience` INT NOT NULL DEFAULT 0,
  `winner` INT NOT NULL DEFAULT 0,      -- winner user id, 0 for a draw or an abnormal end
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT DEFAULT 0,
  `version` TINYINT DEFAULT 0,
  `project_code` VARCHAR(45) DEFAULT NULL,
  `tenant_code` VARCHAR(255) DEFAULT NULL
);
CREATE INDEX IF NOT EXISTS `date_source` ON t_pk (`create_time`, `source_user`);
CREATE INDEX IF NOT EXISTS `date_target` ON t_pk (`create_time`, `target_user`);
CREATE INDEX IF NOT EXISTS `source_target_date` ON t_pk (`source_user`, `target_user`, `create_time`);

CREATE TABLE IF NOT EXISTS t_pk_gift (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT,
  `pk_id` BIGINT NOT NULL,
  `sender` INT NOT NULL,
  `gift_beans` BIGINT DEFAULT 0,
  `gift_times` INT DEFAULT 0,
  `rank` INT DEFAULT -1,
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT DEFAULT 0,
  `version` TINYINT DEFAULT 0,
  `project_code` VARCHAR(45) DEFAULT NULL,
  `tenant_code` VARCHAR(255) DEFAULT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS `pk_sender` ON t_pk_gift (`pk_id`, `sender`);
CREATE INDEX IF NOT EXISTS `date_pk_sender` ON t_pk_gift (`create_time`, `sender`);

CREATE TABLE IF NOT EXISTS t_pk_anchor (
  `id` INTEGER PRIMARY KEY AUTOINCREMENT,
  `pk_id` BIGINT NOT NULL,
  `duration` INT DEFAULT 0,             -- ms
  `user_id` INT NOT NULL,
  `gifts` BIGINT,
  `audience` INT,
  `most_present_audience` INT,          -- the viewer who gave the most
  `competitor` INT NOT NULL,
  `competitor_gifts` BIGINT,
  `competitor_audience` INT,
  `result` TINYINT NOT NULL DEFAULT 0,  -- 0 draw, 1 win, 2 loss
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT DEFAULT 0,
  `version` TINYINT DEFAULT 0,
  `project_code` VARCHAR(45) DEFAULT NULL,
  `tenant_code` VARCHAR(255) DEFAULT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS `pk_user` ON t_pk_anchor (`pk_id`, `user_id`);
CREATE INDEX IF NOT EXISTS `user_date` ON t_pk_anchor (`user_id`, `create_time`);
