-- Organization numbers PowerOffice Go itself reported for a tenant (in an onboarding).
-- Only these match a re-onboarded client to an existing tenant; a number an admin typed at
-- registration never does (it could name another customer's client).
CREATE TABLE verified_organization_numbers (
    tenant_id            TEXT    PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    environment          TEXT    NOT NULL CHECK (environment IN ('demo', 'production')),
    organization_number  TEXT    NOT NULL,
    verified_at          INTEGER NOT NULL
) STRICT;

CREATE INDEX verified_organization_numbers_by_number ON verified_organization_numbers (environment, organization_number);

-- Tenants that completed onboardings already hold the number Go reported for them.
INSERT OR IGNORE INTO verified_organization_numbers (tenant_id, environment, organization_number, verified_at)
SELECT t.tenant_id, t.environment, t.organization_number, COALESCE(s.completed_at, s.created_at)
FROM onboarding_sessions AS s, json_each(s.tenants) AS j
JOIN tenants AS t ON t.tenant_id = j.value
WHERE s.status = 'COMPLETED' AND t.organization_number IS NOT NULL
  -- the same tenant, not one deleted and registered again by hand since (typed number)
  AND t.created_at <= COALESCE(s.completed_at, s.created_at);

-- The integrator's end user a session is bound to (a keyed hash of the opaque subject
-- BeginOnboarding was given): CompleteOnboarding must repeat it.
ALTER TABLE onboarding_sessions ADD COLUMN subject_hash TEXT;
