"""The operations kit agrees with the service: every metric the alerts and the dashboard
name is one a running `streamer run` exports, and `make demo` ends with a reconciliation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamer.demo_account import KafkaPosition, reconciliation
from streamer.instrumentation import Stats
from streamer.testing import AlertSource, FakeIncidentIo
from tests.pipeline import TOKENS, Pipeline, ServiceProcess, check_event

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "k8s" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "k8s" / "base" / "grafana-dashboard.json"

# Metrics that are not streamer's own, and who exports them.
EXTERNAL = {
    "kube_deployment_status_replicas_ready": "kube-state-metrics",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "the kubelet's cAdvisor",
    "container_memory_working_set_bytes": "the kubelet's cAdvisor",
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
_KEYWORDS |= {"unless", "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\()?", text):
        name, call = match.groups()
        if not call and name not in _KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", name):
            names.add(name)
    return names


def queries() -> dict[str, str]:
    """Every PromQL expression the alerts and the dashboard use, by where it is."""
    out = {}
    for group in yaml.safe_load(RULES.read_text())["spec"]["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", variable["definition"])
            out[f"variable {variable['name']}"] = query
    return out


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "sum by (namespace, reason) ((a_total unless a_total offset 10m) or increase(b_total"
        '{x="y", code=~"4.."}[10m])) > 0 and on (pod) histogram_quantile(0.99, sum by (le) '
        '(rate(c_bucket{namespace="$namespace"}[$__rate_interval]))) * 60'
    )
    assert metric_names(expr) == {"a_total", "b_total", "c_bucket"}
    assert metric_names('max(kube_x{deployment="streamer"}) < 1') == {"kube_x"}
    named = {n for q in queries().values() for n in metric_names(q)}
    assert len(named) >= 15 and "streamer_consumer_lag" in named  # the parser finds them


@pytest.fixture(scope="module")
def exported(infrastructure: Any, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names on a running `streamer run`'s /metrics after events of every kind."""
    tmp_path = tmp_path_factory.mktemp("operations")
    sources = [
        AlertSource("SRC_A", TOKENS["TEST_TOKEN_A"]),
        AlertSource("SRC_B", TOKENS["TEST_TOKEN_B"]),
    ]
    with pytest.MonkeyPatch.context() as monkeypatch, FakeIncidentIo(sources) as fake:
        stats = {"properties": {"statistics.interval.ms": 200, "session.timeout.ms": 6000}}
        pipeline = Pipeline(infrastructure, fake, tmp_path, monkeypatch=monkeypatch, kafka=stats)
        config = yaml.safe_load(pipeline.config_path.read_text())
        drop = {"name": "noise", "match": ["labels.team = noise"], "destination": "drop"}
        config["routes"].insert(0, drop)
        pipeline.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        fake.fail(503, count=1)  # one retry
        pipeline.produce(
            [
                *(check_event(f"host-{n}", "CRITICAL", n=n) for n in range(4)),
                check_event("host-9", "CRITICAL", team="noise"),  # dropped
                b"garbage",  # dead-lettered
            ]
        )
        process = ServiceProcess(pipeline, tmp_path / "run.log")
        try:
            pipeline.wait_for(lambda: "metrics: http://" in process.log(), "the metrics line")
            url = process.log().split("metrics: ")[1].split("/metrics")[0]

            def scrape() -> set[str]:
                text = httpx.get(f"{url}/metrics").text
                families = text_string_to_metric_families(text)
                return {s.name for family in families for s in family.samples}

            pipeline.wait_for(lambda: len(fake.events) == 4, "delivered")
            pipeline.wait_committed()
            pipeline.wait_for(lambda: "streamer_consumer_lag" in scrape(), "lag reported")
            # a rejected reload: the service keeps its rules, logs and counts it
            pipeline.config_path.write_text(pipeline.config_path.read_text() + "\nbogus: 1\n")
            pipeline.wait_for(lambda: "change rejected" in process.log(), "the reload rejected")
            return scrape()
        finally:
            process.signal(15)
            process.wait()


@pytest.mark.integration
def test_every_metric_the_alerts_and_the_dashboard_use_is_exported(exported: set[str]) -> None:
    missing = {
        f"{where}: {name}"
        for where, expr in queries().items()
        for name in metric_names(expr)
        if name not in exported and name not in EXTERNAL
    }
    assert not missing, "not on streamer's /metrics:\n" + "\n".join(sorted(missing))


def test_the_demo_ends_with_a_reconciliation() -> None:
    stats = Stats(consumed=10, routed=12, delivered=11, dropped=2, dead_lettered=2)
    outcomes = {"delivered": 7, "dropped": 2, "dead-lettered": 1}
    text = reconciliation(stats, outcomes, KafkaPosition(in_topics=10, committed=10), refused=1)
    assert (
        "consumed 10 = dropped 2 + delivered 7 + dead-lettered 1 + superseded 0 "
        "+ not finished 0\n" in text
    )
    assert "routed 12 = delivered 11 + superseded 0 + refused 1 + not finished 0\n" in text
    assert "lag 0 = not finished 0 + done after them 0" in text
    assert "nothing lost: every message finished and every offset committed" in text
    # interrupted with work left: the lag is what the next run reads again or skips
    outcomes = {"delivered": 5, "dropped": 2, "dead-lettered": 1, "revoked": 2}
    kafka = KafkaPosition(in_topics=11, committed=6, done_after=2)  # one never read
    text = reconciliation(stats, outcomes, kafka, refused=1)
    assert "+ not finished 2\n" in text
    assert "lag 5 = not finished 2 + done after them 2 (skipped next run) + not read yet 1" in text
    assert (
        "nothing lost: the next run reads the 3 not finished or not read yet, and skips the 2 done"
        in text
    )
    # finished messages past what the offset map holds are read again: a duplicate, no loss
    text = reconciliation(stats, outcomes, KafkaPosition(in_topics=11, committed=4), refused=1)
    assert "lag 7 = not finished 2 + done after them 0 (skipped next run) + not read yet 1 " in text
    assert "+ done, read again 4\n" in text and "nothing lost" in text
    # a term missing, or committed past an unfinished message: said so, never balanced
    text = reconciliation(stats, {"delivered": 5, "dropped": 2}, kafka, refused=1)
    assert "consumed 10 = dropped 2 + delivered 5 + dead-lettered 0 + superseded 0 " in text
    assert "DOES NOT ADD UP: 7" in text and "nothing lost" not in text
    text = reconciliation(stats, outcomes, KafkaPosition(in_topics=11, committed=9), refused=1)
    assert "lag 2 = not finished 2 + done after them 0" in text
    assert "DOES NOT ADD UP: 3" in text and "nothing lost" not in text


def test_silenced_messages_are_a_term_of_the_reconciliation() -> None:
    stats = Stats(consumed=10, routed=6, delivered=6, dropped=1, silenced=3)
    outcomes = {"delivered": 6, "dropped": 1, "silenced": 3}
    text = reconciliation(stats, outcomes, KafkaPosition(in_topics=10, committed=10))
    assert "consumed 10 = dropped 1 + silenced 3 + delivered 6 + dead-lettered 0 " in text
    assert "DOES NOT ADD UP" not in text and "nothing lost" in text
    # two alert events routed, then kept quiet while they waited by a silence added meanwhile
    stats = Stats(consumed=10, routed=8, delivered=6, dropped=1, silenced=3)
    text = reconciliation(stats, outcomes, KafkaPosition(10, 10), quieted=2)
    assert "routed 8 = delivered 6 + superseded 0 + refused 0 + silenced while waiting 2 " in text
    assert "+ not finished 0" in text and "DOES NOT ADD UP" not in text
    # without the term, the three silenced messages would be missing from the account
    text = reconciliation(stats, {"delivered": 6, "dropped": 1}, KafkaPosition(10, 10))
    assert "DOES NOT ADD UP: 7" in text
