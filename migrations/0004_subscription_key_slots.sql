-- pogo-vault schema, version 4: two subscription keys per integration.
-- Go's API gateway (Azure API Management) gives every subscription a primary and a
-- secondary key, both valid at once; rotating means switching to the other key, then
-- regenerating the first (go-api.md, "Keys"). The primary key keeps its columns and its
-- sealed row (owner = environment); the secondary's sealed row has owner
-- '<environment>:secondary'. `active_slot` names the key the vault sends.
ALTER TABLE integrations ADD COLUMN secondary_key_version INTEGER;
ALTER TABLE integrations ADD COLUMN secondary_key_hint TEXT;
ALTER TABLE integrations ADD COLUMN active_slot TEXT NOT NULL DEFAULT 'primary'
    CHECK (active_slot IN ('primary', 'secondary'));
