CREATE TABLE branches (
    id               uuid PRIMARY KEY,
    name             text        NOT NULL,
    credit_code      text        NOT NULL,
    region_code      text        NOT NULL,
    industry_section char(1)     NOT NULL CHECK (industry_section BETWEEN 'A' AND 'T'),
    kind             text        NOT NULL,
    parent_id        uuid REFERENCES branches (id),
    founded_on       date        NOT NULL,
    status           text        NOT NULL DEFAULT 'active',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- An employer has one active union branch.
CREATE UNIQUE INDEX branches_active_credit_code ON branches (credit_code) WHERE status = 'active';
CREATE INDEX branches_region ON branches (region_code);
