-- DNS-01 answers the platform's own DNS server gives for its challenge zone: TXT values at
-- <host>.<token>.<challenge_zone> while an order needs them. Keyed by (name, value), so the
-- apex and wildcard orders of one name, which validate at the same name, keep both values.
CREATE TABLE dns_challenges (
    name TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (name, value)
);
