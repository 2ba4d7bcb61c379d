-- The audit schema's first migration: the schema exists and is owned by this service.
COMMENT ON SCHEMA audit IS 'Owned by the audit service; no other service writes here.';
