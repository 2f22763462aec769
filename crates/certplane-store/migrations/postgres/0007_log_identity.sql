-- The propagation log's identity: a random id drawn on first use. An edge resumes by revision
-- only within the same log; a database restored from a backup or created anew draws another
-- id, so edges that followed the old one take a fresh snapshot instead of trusting revision
-- numbers that now mean something else.
ALTER TABLE revision_compaction ADD COLUMN log_id TEXT NOT NULL DEFAULT '';
