SELECT
  "t0"."phase",
  AVG(
    CASE
      WHEN CASE
        WHEN "t0"."sessions_attended" IS NULL
        THEN "t0"."sessions_attended"
        ELSE LEAST(200, "t0"."sessions_attended")
      END IS NULL
      THEN CASE
        WHEN "t0"."sessions_attended" IS NULL
        THEN "t0"."sessions_attended"
        ELSE LEAST(200, "t0"."sessions_attended")
      END
      ELSE GREATEST(
        0,
        CASE
          WHEN "t0"."sessions_attended" IS NULL
          THEN "t0"."sessions_attended"
          ELSE LEAST(200, "t0"."sessions_attended")
        END
      )
    END
  ) AS "mean_sessions_attended",
  QUANTILE_CONT(
    CASE
      WHEN CASE
        WHEN "t0"."sessions_attended" IS NULL
        THEN "t0"."sessions_attended"
        ELSE LEAST(200, "t0"."sessions_attended")
      END IS NULL
      THEN CASE
        WHEN "t0"."sessions_attended" IS NULL
        THEN "t0"."sessions_attended"
        ELSE LEAST(200, "t0"."sessions_attended")
      END
      ELSE GREATEST(
        0,
        CASE
          WHEN "t0"."sessions_attended" IS NULL
          THEN "t0"."sessions_attended"
          ELSE LEAST(200, "t0"."sessions_attended")
        END
      )
    END,
    0.5
  ) AS "p50_sessions_attended",
  COUNT(DISTINCT "t0"."pupil_id") AS "_pupils"
FROM "PupilOnRoll" AS "t0"
GROUP BY
  1
