-- The platform's ACME account per directory URL. The credentials (they hold the account's
-- private key) are sealed under a master key like certificate keys; the directory URL is the
-- associated data, so sealed credentials moved to another directory's row do not open.
CREATE TABLE acme_accounts (
    directory_url TEXT COLLATE "C" PRIMARY KEY,
    account_url TEXT NOT NULL,
    key_id TEXT NOT NULL,
    credentials_sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
