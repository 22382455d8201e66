-- The PK results tables of the app, with the source document's column names
-- (`source_toom` included: existing readers select it by that name).
-- Changes from the source, all compatible with its readers:
--   * `id` of t_pk and `pk_id` elsewhere are the engine's PK ids (BIGINT), written
--     explicitly, so a replayed write hits the same row;
--   * bean sums are BIGINT (a PK can exceed 2^31 beans);
--   * unique keys make every write an idempotent upsert:
--     t_pk by id, t_pk_gift by (pk_id, sender) (as in the source),
--     t_pk_anchor by (pk_id, user_id).

CREATE TABLE IF NOT EXISTS t_pk (
  `id` BIGINT PRIMARY KEY,
  `type` TINYINT(2) DEFAULT 1 COMMENT '1: two-room PK',
  `status` TINYINT(2) DEFAULT 1 COMMENT '1 running, 2 ended, 3 ended abnormally, 4 after-battle stage',
  `sequel_type` TINYINT(2) DEFAULT 1 COMMENT '0: no sequel',
  `sequel_content` VARCHAR(128) DEFAULT NULL,
  `interfered` TINYINT(1) DEFAULT 1 COMMENT '0 matched, 1 made by invitation',
  `start_time` DATETIME(3) DEFAULT NULL,
  `end_time` DATETIME(3) DEFAULT NULL,
  `duration` INT(11) DEFAULT 0 COMMENT 'ms',
  `source_user` INT(11) NOT NULL,
  `source_toom` INT(11) NOT NULL COMMENT 'the source anchor''s room (name kept from the original schema)',
  `source_gifts` BIGINT NOT NULL DEFAULT 0,
  `source_audience` INT(11) NOT NULL DEFAULT 0,
  `target_user` INT(11) NOT NULL,
  `target_room` INT(11) NOT NULL,
  `target_gifts` BIGINT NOT NULL DEFAULT 0,
  `target_audience` INT(11) NOT NULL DEFAULT 0,
  `winner` INT(11) NOT NULL DEFAULT 0 COMMENT 'winner user id, 0 for a draw or an abnormal end',
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT(1) DEFAULT '0',
  `version` TINYINT(4) DEFAULT '0',
  `project_code` VARCHAR(45) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  `tenant_code` VARCHAR(255) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  KEY `date_source` (`create_time`, `source_user`),
  KEY `date_target` (`create_time`, `target_user`),
  KEY `source_target_date` (`source_user`, `target_user`, `create_time`)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS t_pk_gift (
  `id` BIGINT PRIMARY KEY AUTO_INCREMENT,
  `pk_id` BIGINT NOT NULL,
  `sender` INT(11) NOT NULL,
  `gift_beans` BIGINT DEFAULT 0,
  `gift_times` INT(11) DEFAULT 0,
  `rank` INT(4) DEFAULT -1,
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT(1) DEFAULT '0',
  `version` TINYINT(4) DEFAULT '0',
  `project_code` VARCHAR(45) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  `tenant_code` VARCHAR(255) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  UNIQUE KEY `pk_sender` (`pk_id`, `sender`),
  KEY `date_pk_sender` (`create_time`, `sender`)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS t_pk_anchor (
  `id` BIGINT PRIMARY KEY AUTO_INCREMENT,
  `pk_id` BIGINT NOT NULL,
  `duration` INT(11) DEFAULT 0 COMMENT 'ms',
  `user_id` INT(11) NOT NULL,
  `gifts` BIGINT,
  `audience` INT(11),
  `most_present_audience` INT(11) COMMENT 'the viewer who gave the most',
  `competitor` INT(11) NOT NULL,
  `competitor_gifts` BIGINT,
  `competitor_audience` INT(11),
  `result` TINYINT(1) NOT NULL DEFAULT 0 COMMENT '0 draw, 1 win, 2 loss',
  `extend` TEXT DEFAULT NULL,
  `create_time` DATETIME DEFAULT NULL,
  `update_time` DATETIME DEFAULT NULL,
  `deleted` TINYINT(1) DEFAULT '0',
  `version` TINYINT(4) DEFAULT '0',
  `project_code` VARCHAR(45) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  `tenant_code` VARCHAR(255) COLLATE utf8mb4_unicode_ci DEFAULT NULL,
  UNIQUE KEY `pk_user` (`pk_id`, `user_id`),
  KEY `user_date` (`user_id`, `create_time`)
) DEFAULT CHARSET = utf8mb4;
