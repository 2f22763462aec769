-- The propagation log: every change to what edges serve for a hostname (a certificate
-- imported, stored, replaced or deleted; ownership gained or lost; the hostname removed) adds
-- a row in the same transaction as the change. Edges follow it in revision order and re-read
-- the hostname's state; a hostname that is gone is dropped.

CREATE TABLE revisions (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
