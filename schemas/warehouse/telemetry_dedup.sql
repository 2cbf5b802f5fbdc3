-- telemetry_dedup: one row per (device_id, seq, metric), the first ingested.
-- Sinks write at least once (a retried or replayed bundle writes its rows
-- again); this view is what makes those duplicates harmless to readers.
-- Written in the SQL subset BigQuery and DuckDB both accept: unquoted
-- dataset-qualified names, QUALIFY with a WHERE clause (BigQuery wants one).
-- {{dataset}} is replaced by the BigQuery dataset or DuckDB schema name.
CREATE OR REPLACE VIEW {{dataset}}.telemetry_dedup AS
SELECT *
FROM {{dataset}}.telemetry
WHERE TRUE
QUALIFY ROW_NUMBER() OVER (PARTITION BY device_id, seq, metric ORDER BY ingest_time) = 1
