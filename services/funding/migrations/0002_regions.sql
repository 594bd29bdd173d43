-- Every grant and payee has a region: the region rule (out of scope: 404 on read, 403 on write)
-- needs one, and a list is cut to the caller's scope by it. Rows written before had it optional;
-- one without a region was the federation's own (approved by a region-level token), so 640000.
UPDATE grants SET region_code = '640000' WHERE region_code IS NULL;
UPDATE beneficiaries SET region_code = '640000' WHERE region_code IS NULL;
ALTER TABLE grants ALTER COLUMN region_code SET NOT NULL;
ALTER TABLE beneficiaries ALTER COLUMN region_code SET NOT NULL;

-- Lists page by (created_at, id) and are cut to a scope by region.
CREATE INDEX grants_page ON grants (created_at, id);
CREATE INDEX grants_region ON grants (region_code, created_at, id);
CREATE INDEX subsidy_claims_page ON subsidy_claims (created_at, id);
CREATE INDEX subsidy_claims_region ON subsidy_claims (region_code, created_at, id);
CREATE INDEX beneficiaries_region ON beneficiaries (region_code);
