-- Edges: the registry of edge nodes and how far each follows the propagation log, the ACME
-- challenge answers they serve, and compaction of the log.

-- Every edge that has reported in, with the revision it last applied. The revision may go down:
-- an edge that restarts takes a fresh snapshot at the current revision.
CREATE TABLE edges (
    id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);

-- Answers to ACME challenges, served by the edges. A hostname needs no app to have one.
CREATE TABLE challenges (
    hostname TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01')),
    token TEXT NOT NULL,
    key_authorization TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (hostname, kind, token)
);

-- The newest revision of a hostname.
CREATE INDEX revisions_hostname ON revisions (hostname, revision);

-- One row: the highest revision compaction has deleted. An edge that last applied an older one
-- may have missed changes, and takes a fresh snapshot.
CREATE TABLE revision_compaction (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    compacted_through INTEGER NOT NULL
);

INSERT INTO revision_compaction (id, compacted_through) VALUES (1, 0);
