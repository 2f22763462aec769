-- Results of the ownership and DNS checks, and when each hostname is checked next.

ALTER TABLE hostnames ADD COLUMN ownership_verified INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hostnames ADD COLUMN configured INTEGER NOT NULL DEFAULT 0;
-- The last check's full report (JSON): records found, flags, findings.
ALTER TABLE hostnames ADD COLUMN check_report TEXT;
ALTER TABLE hostnames ADD COLUMN checked_at INTEGER;
-- 0 = as soon as possible.
ALTER TABLE hostnames ADD COLUMN next_check_at INTEGER NOT NULL DEFAULT 0;
-- Consecutive checks that did not verify ownership; drives the back-off.
ALTER TABLE hostnames ADD COLUMN check_failures INTEGER NOT NULL DEFAULT 0;

CREATE INDEX hostnames_next_check ON hostnames (next_check_at);
