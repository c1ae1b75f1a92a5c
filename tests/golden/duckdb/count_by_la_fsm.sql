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
    "t0"."term" = '2017-spring' AND "t0"."phase" = 'Secondary'
) AS "t1"
GROUP BY
  1,
  2
