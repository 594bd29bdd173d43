-- The member read model learns membership's keyed lookup hash of each member's ID number (member.joined's
-- id_hash, HMAC-SHA256, never the number): a training provider's attendance report names the trainee by it
-- (changai.command.training.attendance.v1). Members whose member.joined predates the field have none until
-- they join again.
ALTER TABLE members ADD COLUMN id_hash bytea;
CREATE INDEX members_id_hash ON members (id_hash) WHERE id_hash IS NOT NULL;
