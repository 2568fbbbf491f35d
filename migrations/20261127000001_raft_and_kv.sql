-- The Raft log and the key-value state machine of one kvstore node. Each node keeps
-- these tables in its own database (database.database).

-- Raft log entries by index; `entry` is the JSON-encoded openraft entry.
CREATE TABLE IF NOT EXISTS raft_log (
    log_index BIGINT PRIMARY KEY,
    entry     BYTEA  NOT NULL
);

-- Log-store metadata: vote, committed log id, last purged log id (JSON values).
CREATE TABLE IF NOT EXISTS raft_meta (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);

-- The key-value data.
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- State-machine metadata: last applied log id, membership, retired node ids, current
-- snapshot (JSON values).
CREATE TABLE IF NOT EXISTS sm_meta (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
