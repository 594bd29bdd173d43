-- A reform member unit (改革协调小组成员单位) can own channels: its liaison's group hears the supervision
-- reminders of the tasks the unit leads. Such a channel belongs to the region's ledger (owner_region 640000)
-- and is routed by the unit id the reform events carry (lead_unit_id), never by region.
ALTER TABLE channels ADD COLUMN owner_unit_id uuid;
ALTER TABLE channels DROP CONSTRAINT channels_owner_kind_check;
ALTER TABLE channels ADD CONSTRAINT channels_owner_kind_check
    CHECK (owner_kind IN ('branch', 'federation', 'reform_unit'));
ALTER TABLE channels ADD CONSTRAINT channels_owner_unit_check
    CHECK ((owner_kind = 'reform_unit') = (owner_unit_id IS NOT NULL));
CREATE INDEX channels_owner_unit ON channels (owner_unit_id) WHERE owner_unit_id IS NOT NULL;

-- Read model, from reform.events: the member units' names (a channel's owner is checked and named by it).
CREATE TABLE reform_units (
    id         uuid PRIMARY KEY,
    name       text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
