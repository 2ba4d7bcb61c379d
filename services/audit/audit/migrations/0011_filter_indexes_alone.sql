-- Two filters of GET /audit/events had no index of their own: ?actor_issuer= without ?actor= (its
-- column came second in no index since 0003) and ?resource_id= without ?resource_type= (records_resource
-- leads with the type). One page of either that matched nothing walked the whole trail (100k records:
-- ~4,500 pages for one empty page), and anyone holding read:audit could repeat it. Each now walks an
-- index in seq order, as every other filter does (services/audit/tests/test_filter_plans.py). Two more
-- index entries per record appended: measured with bench/audit.py before landing.
CREATE INDEX records_actor_issuer ON records (actor_issuer, seq);
CREATE INDEX records_resource_id ON records (resource_id, seq);
