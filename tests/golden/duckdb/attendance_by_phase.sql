SELECT
  "t1"."phase",
  AVG(
    CASE
      WHEN CASE
        WHEN "t1"."sessions_attended" IS NULL
        THEN "t1"."sessions_attended"
        ELSE LEAST(200, "t1"."sessions_attended")
      END IS NULL
      THEN CASE
        WHEN "t1"."sessions_attended" IS NULL
        THEN "t1"."sessions_attended"
        ELSE LEAST(200, "t1"."sessions_attended")
      END
      ELSE GREATEST(
        0,
        CASE
          WHEN "t1"."sessions_attended" IS NULL
          THEN "t1"."sessions_attended"
          ELSE LEAST(200, "t1"."sessions_attended")
        END
      )
    END
  ) AS "mean_sessions_attended",
  QUANTILE_CONT(
    CASE
      WHEN CASE
        WHEN "t1"."sessions_attended" IS NULL
        THEN "t1"."sessions_attended"
        ELSE LEAST(200, "t1"."sessions_attended")
      END IS NULL
      THEN CASE
        WHEN "t1"."sessions_attended" IS NULL
        THEN "t1"."sessions_attended"
        ELSE LEAST(200, "t1"."sessions_attended")
      END
      ELSE GREATEST(
        0,
        CASE
          WHEN "t1"."sessions_attended" IS NULL
          THEN "t1"."sessions_attended"
          ELSE LEAST(200, "t1"."sessions_attended")
        END
      )
    END,
    0.5
  ) AS "p50_sessions_attended",
  COUNT(DISTINCT "t1"."pupil_id") AS "_pupils"
FROM (
  SELECT
    "t0"."phase",
    "t0"."pupil_id",
    "t0"."sessions_attended"
  FROM "PupilOnRoll" AS "t0"
) AS "t1"
GROUP BY
  1
