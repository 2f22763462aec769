-- Orgs, API tokens, apps, hostnames, and the two ledgers that make tokens and IPv6 addresses
-- single-use for the life of the platform.

CREATE TABLE orgs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE REFERENCES token_ledger (token),
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Every ownership token ever issued, to apps and orgs alike. Rows are never deleted.
CREATE TABLE token_ledger (
    token TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    issued_at INTEGER NOT NULL
);

-- Every dedicated IPv6 address ever handed out. Rows are never deleted.
CREATE TABLE ipv6_ledger (
    address TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    idx INTEGER NOT NULL,
    app_name TEXT NOT NULL,
    allocated_at INTEGER NOT NULL,
    UNIQUE (prefix, idx)
);

CREATE TABLE apps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id INTEGER NOT NULL REFERENCES orgs (id),
    name TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL UNIQUE REFERENCES token_ledger (token),
    ipv6 TEXT NOT NULL UNIQUE REFERENCES ipv6_ledger (address),
    backends TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX apps_org ON apps (org_id, name);

CREATE TABLE hostnames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id INTEGER NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    hostname TEXT NOT NULL UNIQUE,
    acme_requested INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX hostnames_app ON hostnames (app_id, hostname);
