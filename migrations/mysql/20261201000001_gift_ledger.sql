-- The gift ledger (pkd's own table, beside t_pk_gift's totals per sender): every gift
-- a settled PK counted, once, as the engine counted it. Written with the PK's result,
-- in the same transaction, keyed by (pk_id, gift_id) so that a rewrite is an upsert.
-- Ids are BIGINT (the gift API takes ids up to 2^63 - 1).

CREATE TABLE IF NOT EXISTS t_pk_gift_ledger (
  `pk_id` BIGINT NOT NULL,
  `gift_id` BIGINT NOT NULL COMMENT 'the gift service''s id of the gift',
  `sender` BIGINT NOT NULL,
  `receiver` BIGINT NOT NULL COMMENT 'the anchor who received it',
  `beans` BIGINT NOT NULL,
  `gift_time` DATETIME(3) NOT NULL COMMENT 'when the engine counted it (the command''s time)',
  `create_time` DATETIME DEFAULT NULL COMMENT 'the PK''s settlement',
  PRIMARY KEY (`pk_id`, `gift_id`),
  KEY `sender_time` (`sender`, `gift_time`)
) DEFAULT CHARSET = utf8mb4;
