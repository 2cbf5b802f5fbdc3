-- dashboard: every reading of telemetry_dedup (so none twice) with what the
-- reference data says about its device and metric. Built for Looker Studio
-- and the local dashboard: one row per (device_id, seq, metric), live as soon
-- as a reading is written; devices missing from the reference data are kept,
-- with known_device false.
--
-- Reference tables are replaced by each load, but a load appended by mistake
-- must not duplicate readings either: only the newest row per device, and
-- per device and metric, is joined. Thresholds are their own flat table
-- because UNNEST of a repeated record reads differently in BigQuery and
-- DuckDB, and because BigQuery loads CSV only into flat tables.
-- Written in the SQL subset BigQuery and DuckDB both accept (see
-- telemetry_dedup.sql); {{dataset}} is the dataset or schema name.
CREATE OR REPLACE VIEW {{dataset}}.dashboard AS
WITH devices AS (
  SELECT device_id, site, location, device_class, owner
  FROM {{dataset}}.reference
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY load_time DESC) = 1
),
limits AS (
  SELECT device_id, metric, min_value, max_value
  FROM {{dataset}}.reference_thresholds
  WHERE TRUE
  QUALIFY ROW_NUMBER() OVER (PARTITION BY device_id, metric ORDER BY load_time DESC) = 1
)
SELECT
  t.device_id,
  t.seq,
  t.ts,
  t.metric,
  t.value,
  t.buffered,
  t.registry,
  t.location AS registry_location,
  t.subfolder,
  COALESCE(t.device_class, d.device_class) AS device_class,
  d.device_id IS NOT NULL AS known_device,
  d.site,
  d.location AS site_location,
  d.owner,
  l.min_value AS threshold_min,
  l.max_value AS threshold_max,
  COALESCE(t.value < l.min_value OR t.value > l.max_value, FALSE) AS out_of_range
FROM {{dataset}}.telemetry_dedup AS t
LEFT JOIN devices AS d ON d.device_id = t.device_id
LEFT JOIN limits AS l ON l.device_id = t.device_id AND l.metric = t.metric
