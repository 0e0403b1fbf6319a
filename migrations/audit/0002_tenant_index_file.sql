-- The tenant index moves out of the audit database into a derived file beside it, filled in
-- the background (src/audit/tenant_index.rs). Tenants arrive in random order, so this index
-- wrote one page per record in every commit and made WAL checkpoints long: most of the
-- tail latency of GetAccessToken (BENCHMARKS.md). The events themselves are unchanged, so
-- every hash and checkpoint stays valid.
DROP INDEX IF EXISTS events_by_tenant;
