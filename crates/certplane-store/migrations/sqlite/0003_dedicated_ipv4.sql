-- An app's dedicated IPv4 address, from the operator's pool. Unlike IPv6 addresses these are
-- handed out again once their app is gone; the unique index keeps one holder at a time.

ALTER TABLE apps ADD COLUMN dedicated_ipv4 TEXT;

CREATE UNIQUE INDEX apps_dedicated_ipv4 ON apps (dedicated_ipv4);
