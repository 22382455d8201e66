-- The gift ledger in SQLite's dialect: the same table, columns and keys as
-- migrations/mysql (see the notes there). gift_time holds UTC text
-- 'YYYY-MM-DD HH:MM:SS.sss', create_time 'YYYY-MM-DD HH:MM:SS'.

CREATE TABLE IF NOT EXISTS t_pk_gift_ledger (
  `pk_id` BIGINT NOT NULL,
  `gift_id` BIGINT NOT NULL,            -- the gift service's id of the gift
  `sender` BIGINT NOT NULL,
  `receiver` BIGINT NOT NULL,           -- the anchor who received it
  `beans` BIGINT NOT NULL,
  `gift_time` DATETIME NOT NULL,        -- when the engine counted it (the command's time)
  `create_time` DATETIME DEFAULT NULL,  -- the PK's settlement
  PRIMARY KEY (`pk_id`, `gift_id`)
);
CREATE INDEX IF NOT EXISTS `sender_time` ON t_pk_gift_ledger (`sender`, `gift_time`);
