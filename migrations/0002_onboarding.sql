-- Onboarding sessions (Go's onboarding flow). A session completes at most once and not
-- after it expires; the tenants it created or re-activated are recorded.
CREATE TABLE onboarding_sessions (
    onboarding_id        TEXT    PRIMARY KEY,
    environment          TEXT    NOT NULL CHECK (environment IN ('demo', 'production')),
    redirect_url         TEXT    NOT NULL,
    organization_number  TEXT,
    tenant_id_prefix     TEXT    NOT NULL,
    caller               TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL,
    -- PENDING → COMPLETING (claimed, Go being asked) → COMPLETED | FAILED; back to PENDING
    -- only when Go could not be reached, so the same token can be tried again.
    status               TEXT    NOT NULL CHECK (status IN ('PENDING', 'COMPLETING', 'COMPLETED', 'FAILED')),
    go_status            TEXT,
    completed_at         INTEGER,
    tenants              TEXT    NOT NULL DEFAULT '[]'
) STRICT;
