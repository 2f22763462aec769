-- Certificates of a hostname: ACME ones (one per key type) and at most one custom one. The
-- private key is stored only sealed (AES-256-GCM) under the master key named by key_id.

CREATE TABLE certificates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL REFERENCES hostnames (hostname) ON DELETE CASCADE,
    source TEXT NOT NULL,
    key_type TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    issuer TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    -- JSON: what the import flagged, [{"code","message"}]
    warnings TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (hostname, source, key_type)
);
