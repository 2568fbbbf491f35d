-- Revisions and leases. Each key's revisions (etcd's model; a revision is a Raft log
-- index): the write that created it, its last write, the writes since creation, and
-- the lease it is attached to (0: none). Keys written before this migration get
-- revisions 0 and version 1, the same on every node whatever it had applied.
ALTER TABLE kv
    ADD COLUMN create_revision BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN mod_revision    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN version         BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN lease           BIGINT NOT NULL DEFAULT 0;

-- The keys of a lease, found when it is revoked or expires.
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease <> 0;

-- Leases: id (the revision that granted it), TTL, and the revision of its last grant
-- or keepalive.
CREATE TABLE IF NOT EXISTS leases (
    id          BIGINT PRIMARY KEY,
    ttl_seconds BIGINT NOT NULL,
    renewed     BIGINT NOT NULL
);
