-- ACME issuance: each hostname's issuance schedule and lease, the orders as persistent state
-- machines, and a ledger of what was sent to the CA (the platform's own rate-limit budget).

-- When the issuer looks at the hostname next (0 = now), who works on it until when (a lease,
-- so one control plane drives a hostname at a time), consecutive failed rounds (back-off), the
-- CA's rate-limit end, and the attempts' errors (JSON [{code,message,remediation,timestamp,
-- challenge,key_type}]).
ALTER TABLE hostnames ADD COLUMN acme_next_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hostnames ADD COLUMN acme_lease_owner TEXT;
ALTER TABLE hostnames ADD COLUMN acme_lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hostnames ADD COLUMN acme_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hostnames ADD COLUMN rate_limited_until INTEGER;
ALTER TABLE hostnames ADD COLUMN acme_errors TEXT;

CREATE INDEX hostnames_acme_next ON hostnames (acme_next_at);

-- One row per order sent (or about to be sent) to the CA. state: creating (row written before
-- the new-order request: a crash leaves it to be recovered), pending, ready, processing (CSR
-- sent; the key is stored sealed before that), done (certificate stored), dead (invalid,
-- expired or abandoned at the CA). The CSR's private key is sealed like certificate keys.
CREATE TABLE acme_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL REFERENCES hostnames (hostname) ON DELETE CASCADE,
    key_type TEXT NOT NULL,
    renewal INTEGER NOT NULL,
    challenge TEXT NOT NULL,
    state TEXT NOT NULL,
    order_url TEXT,
    key_id TEXT,
    key_sealed BLOB,
    problem TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX acme_orders_hostname ON acme_orders (hostname, state);

-- What the platform asked of the CA, for its budget: kind = order | certificate |
-- failed_validation; names = the order's identifiers, sorted, comma-separated.
CREATE TABLE acme_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    registered_domain TEXT NOT NULL,
    names TEXT NOT NULL,
    at INTEGER NOT NULL
);

CREATE INDEX acme_ledger_domain ON acme_ledger (registered_domain, at);
CREATE INDEX acme_ledger_at ON acme_ledger (kind, at);
