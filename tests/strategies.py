"""Hypothesis strategies for monitoring events valid under schemas/ (v2)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

text = st.text(max_size=30)
label_maps = st.dictionaries(
    st.sampled_from(
        [
            "team",
            "service",
            "env",
            "alertname",
            "instance",
            "severity",
            "summary",
            "description",
            "x",
        ]
    )
    | text,
    text,
    max_size=5,
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))

alerts = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["FIRING", "RESOLVED"]),
        "labels": label_maps,
        "annotations": label_maps,
        "starts_at": times,
        "ends_at": st.none() | times,
        "generator_url": st.none() | text,
        "fingerprint": text,
    }
)
checks = st.fixed_dictionaries(
    {
        "host": text,
        "service": st.none() | text,
        "check": text,
        "state": st.sampled_from(["OK", "WARNING", "CRITICAL", "UNKNOWN"]),
        "output": text,
    }
)
# Exactly one of alert and check is what producers promise; the schema allows both or
# neither, so the strategy does too: evaluation must survive what the schema lets through.
events = st.fixed_dictionaries(
    {
        "event_id": text,
        "event_time": times,
        "source_system": st.sampled_from(
            ["PROMETHEUS", "ALERTMANAGER", "DATADOG", "NAGIOS", "ICINGA", "CUSTOM", "OTHER"]
        ),
        "severity": st.sampled_from(["CRITICAL", "ERROR", "WARNING", "INFO", "UNKNOWN"]),
        "labels": label_maps,
        "alert": st.none() | alerts,
        "check": st.none() | checks,
        "runbook_url": st.none() | text,
    }
)
