-- A site's gateways by site (issue 19, part 0): the scorer's household batches read each household's hubs
-- (scoring/households.py) and the API lists a site's hubs. Without it each lookup scanned every gateway of the estate:
-- 50 households a batch x 3 scans of 44,000 gateways took 1.4 s a batch at 20,000 households, most of the slow tick.
CREATE INDEX gateways_site ON gateways (site_id, gateway_id);
