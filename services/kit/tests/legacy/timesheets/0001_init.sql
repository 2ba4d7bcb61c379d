-- The timesheets schema's first migration: the schema exists and is owned by this service.
COMMENT ON SCHEMA timesheets IS 'Owned by the timesheets service; no other service writes here.';
