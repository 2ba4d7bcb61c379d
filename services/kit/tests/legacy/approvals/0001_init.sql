-- The approvals schema's first migration: the schema exists and is owned by this service.
COMMENT ON SCHEMA approvals IS 'Owned by the approvals service; no other service writes here.';
