-- Membership's branches as funding knows them (from membership.events): where each one is, so a
-- branch named as a payee takes its own region, and a city cannot register or pay another city's
-- branch by naming its id before that branch was registered as a payee.
CREATE TABLE branches (
    id          text PRIMARY KEY,
    region_code text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
