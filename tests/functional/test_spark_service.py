"""The service on the Spark engine (local[2]): the same protected results as on DuckDB."""

from __future__ import annotations

import pandas as pd
import pytest

from safestats.engines import spark_available

pytestmark = pytest.mark.skipif(not spark_available(), reason="needs the spark extra and Java 17")


def test_the_service_on_spark_releases_what_it_releases_on_duckdb(connect):
    spark = connect("demo.statistician", engine="spark")
    duck = connect("demo.statistician", store_url="sqlite://")  # its own store: no linked tables shared
    dp = connect("demo.unrestricted", engine="spark")  # the same Spark session as the first
    try:

        def table(s):
            return (
                s.table("PupilOnRoll")
                .where(term="2017-spring")
                .group_by("la_code", "fsm_eligible")
                .count()
                .sum("sessions_attended")
                .run()
            )

        a, b = table(spark), table(duck)
        pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b))
        assert a.symbols.equals(b.symbols) and a.suppressed > 0
        r = dp.table("PupilOnRoll").join("Nationality").where(term="2017-spring").group_by("la_code").count().run()
        assert len(r) == 152 and r.privacy["spent"] == "1/2"
    finally:
        spark._transport._service.engine.close()
