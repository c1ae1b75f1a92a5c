SELECT
  "t1"."la_code",
  "t1"."fsm_eligible",
  COUNT(*) AS "count",
  COUNT(DISTINCT "t1"."pupil_id") AS "_pupils"
FROM (
  SELECT
    "t0"."fsm_eligible",
    "t0"."la_code",
    "t0"."pupil_id"
  FROM "PupilOnRoll" AS "t0"
  WHERE
    COALESCE("t0"."term" IN ('2017-spring'), FALSE)
    AND COALESCE("t0"."phase" IN ('Secondary'), FALSE)
) AS "t1"
GROUP BY
  1,
  2
