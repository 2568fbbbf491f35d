-- Keys compare byte by byte. Ranges (listing, range deletes) ask for that order with
-- `COLLATE "C"`; on a database whose default collation is linguistic (en_US.UTF-8,
-- ICU), an index in that collation cannot serve them and every page would scan the
-- table. With the column itself in "C", the primary key index is in byte order, and
-- equality is unchanged (both collations are deterministic). Rebuilds the index once.
ALTER TABLE kv ALTER COLUMN key TYPE TEXT COLLATE "C";
