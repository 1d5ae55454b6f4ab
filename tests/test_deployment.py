"""The container image and the Kubernetes manifests, validated offline.

Every overlay is rendered with kustomize, then checked the way a reviewer of a production
deployment would: the API server's schemas (kubernetes-validate --strict), the CRDs' own
schemas (vendored in k8s/schemas), checkov, yamllint, and the promises this project makes:
the rules in the ConfigMap load, every flag and variable the manifests pass is one streamer
reads, the drain fits in the grace period, KEDA never scales past the partitions.

The tools are installed by `make deploy-tools` (make test does it) under .cache/.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streamer.cli import build_parser
from streamer.config import DeliverySettings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CACHE = Path(os.environ.get("STREAMER_CACHE_DIR") or ROOT / ".cache")
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
# The oldest Kubernetes the manifests are for (unhealthyPodEvictionPolicy is GA in 1.31).
KUBERNETES_VERSION = "1.31.0"
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}


def tool(name: str) -> Path:
    path = CACHE / ("bin" if name in ("kustomize", "promtool") else "deploy-tools/bin") / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make deploy-tools` installs it (make test does)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)


class Rendered:
    """One overlay as kustomize renders it: the file and its objects."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.objects: list[dict[str, Any]] = [
            d for d in yaml.safe_load_all(path.read_text()) if d is not None
        ]

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"{self.name}: expected one {kind}, found {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if (o["kind"], o["metadata"]["name"]) == (kind, name)]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def config_map(self) -> dict[str, Any]:
        """The ConfigMap with streamer's configuration (the other is the dashboard)."""
        return self.named("ConfigMap", "streamer-config")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        return next(c for c in containers if c["name"] == "streamer")

    @property
    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.config_map["data"]["streamer.yaml"])
        return data

    def run_args(self) -> Any:
        """The container's command line as `streamer run` parses it (argparse exits on drift)."""
        entrypoint, cmd = dockerfile_exec_form("ENTRYPOINT"), dockerfile_exec_form("CMD")
        argv = [*entrypoint, *self.container.get("args", cmd)]
        assert argv[:2] == ["streamer", "run"], f"the image runs {argv[:2]}, not streamer run"
        try:
            args, unknown = build_parser().parse_known_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{self.name}: streamer rejects {argv} (its message is above)")
        assert not unknown, f"{self.name}: streamer run has no {unknown}"
        return args


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    out = tmp_path_factory.mktemp("rendered")
    result: dict[str, Rendered] = {}
    for name in OVERLAYS:
        build = run(tool("kustomize"), "build", K8S / "overlays" / name)
        assert build.returncode == 0, f"kustomize build k8s/overlays/{name}:\n{build.stderr}"
        path = out / f"{name}.yaml"
        path.write_text(build.stdout)
        result[name] = Rendered(name, path)
    return result


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    return rendered[request.param]


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            yield keyword.upper(), rest.strip()


def dockerfile_exec_form(keyword: str) -> list[str]:
    values = [rest for k, rest in dockerfile_instructions() if k == keyword]
    assert values, f"the Dockerfile has no {keyword}"
    parsed: list[str] = json.loads(values[-1])  # exec form: no shell between signals and us
    return parsed


# --- the tools -----------------------------------------------------------------------------


def test_every_overlay_has_the_whole_deployment(overlay: Rendered) -> None:
    kinds = sorted(o["kind"] for o in overlay.objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "ScaledObject",
            "ServiceAccount",
            "TriggerAuthentication",
        ]
    )
    namespaces = {o["metadata"].get("namespace") for o in overlay.objects}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


def test_kubernetes_validate_strict(rendered: dict[str, Rendered]) -> None:
    files = [r.path for r in rendered.values()] + [K8S / "secret.example.yaml"]
    result = run(
        tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, *files
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Kinds it has no schema for must be exactly the custom resources checked below.
    unknown = set(re.findall(r"find schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown <= {kind for _, kind in CUSTOM_KINDS}, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def strict(schema: Any) -> Any:
    """The CRD's structural schema, rejecting fields it does not declare (like --strict)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def test_custom_resources_match_their_vendored_schemas(overlay: Rendered) -> None:
    checked = 0
    for obj in overlay.objects:
        schema_file = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
        if schema_file is None:
            continue
        schema = strict(json.loads((K8S / "schemas" / schema_file).read_text()))
        errors = [
            f"{obj['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
        ]
        assert not errors, "\n".join(errors)
        checked += 1
    assert checked == len(CUSTOM_KINDS)


def test_the_strict_schema_rejects_an_unknown_field() -> None:
    schema = strict(
        json.loads(
            (K8S / "schemas" / CUSTOM_KINDS[("keda.sh/v1alpha1", "ScaledObject")]).read_text()
        )
    )
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [], "maxReplicas": 3},
    }
    assert not jsonschema.Draft7Validator(schema).is_valid(bad)


def test_checkov_kubernetes(rendered: dict[str, Rendered]) -> None:
    files = [r.path for r in rendered.values()] + [K8S / "secret.example.yaml"]
    args = [a for f in files for a in ("-f", f)]
    result = run(
        tool("checkov"),
        "--config-file",
        K8S / ".checkov.yaml",
        "--framework",
        "kubernetes",
        *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed checks:" in result.stdout, result.stdout


def test_checkov_dockerfile() -> None:
    result = run(
        tool("checkov"),
        "--config-file",
        K8S / ".checkov.yaml",
        "--framework",
        "dockerfile",
        "-f",
        ROOT / "Dockerfile",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed checks:" in result.stdout, result.stdout


def test_yamllint(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    # The dashboard's ConfigMap holds JSON (one PromQL query a line, longer than YAML's
    # line limit); the JSON is checked by the dashboard tests below.
    yaml_only = []
    for r in rendered.values():
        documents = r.path.read_text().split("\n---\n")
        path = tmp_path / r.path.name
        path.write_text("\n---\n".join(d for d in documents if "grafana_dashboard:" not in d))
        yaml_only.append(path)
    result = run(tool("yamllint"), "--strict", "-c", K8S / ".yamllint.yaml", K8S, *yaml_only)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what the manifests promise ------------------------------------------------------------


def test_the_configmap_rules_pass_rules_check_in_the_image_layout(
    overlay: Rendered, tmp_path: Path
) -> None:
    # As in the image: the ConfigMap at /etc/streamer/config, the schemas the Dockerfile
    # copies at /etc/streamer/schemas.
    args = overlay.run_args()
    mount = Path(args.config).parent
    assert mount == Path("/etc/streamer/config")
    copies = [rest.split() for k, rest in dockerfile_instructions() if k == "COPY"]
    assert ["schemas/*.avsc", "/etc/streamer/schemas/"] in copies
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "streamer.yaml").write_text(overlay.config_map["data"]["streamer.yaml"])
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    result = run(
        sys.executable,
        "-m",
        "streamer",
        "rules",
        "check",
        "--no-secrets",
        "--config",
        tmp_path / "config" / "streamer.yaml",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_flag_the_manifests_pass_exists(overlay: Rendered) -> None:
    args = overlay.run_args()  # argparse exits (failing the test) on an unknown flag
    ports = {p["name"]: p["containerPort"] for p in overlay.container["ports"]}
    assert args.metrics_port == ports["metrics"]
    assert args.log_format == "json"  # what the cluster's log pipeline parses
    mounts = {m["mountPath"]: m["name"] for m in overlay.container["volumeMounts"]}
    volumes = {v["name"]: v for v in overlay.pod["volumes"]}
    config_volume = volumes[mounts[str(Path(args.config).parent)]]
    assert config_volume["configMap"]["name"] == overlay.config_map["metadata"]["name"]
    assert Path(args.config).name in overlay.config_map["data"]


def _names_streamer_reads() -> set[str]:
    """Every UPPER_CASE string literal in the package: the variables it can read."""
    names: set[str] = set()
    for path in (ROOT / "streamer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return {n for n in names if re.fullmatch(r"[A-Z][A-Z0-9_]+", n)}


def test_every_environment_variable_the_manifests_set_is_read(overlay: Rendered) -> None:
    env = overlay.container.get("env", [])
    referenced = {m for e in env for m in re.findall(r"\$\((\w+)\)", e.get("value", ""))}
    token_variables = {
        source["env"]
        for source in [
            *(d["token"] for d in overlay.config["destinations"].values()),
            *overlay.config["kafka"].get("secret_properties", {}).values(),
        ]
        if "env" in source
    }
    known = _names_streamer_reads() | referenced | token_variables
    for variable in env:
        name = variable["name"]
        # OTEL_*: the OpenTelemetry SDK's own settings, which streamer leaves to it.
        assert name in known or name.startswith("OTEL_"), (
            f"{overlay.name}: the Deployment sets {name}, which streamer never reads"
        )


def test_the_pod_is_hardened(overlay: Rendered) -> None:
    pod, container = overlay.pod, overlay.container
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["runAsUser"] > 0
    tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp]
    for c in pod["containers"] + pod.get("initContainers", []):
        resources = c["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), c["name"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"], c["name"]
    spread = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert spread == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_the_probes_use_the_health_endpoints(overlay: Rendered) -> None:
    container = overlay.container
    paths = {
        probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/livez", "metrics"),
        "livenessProbe": ("/livez", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    # The start-up probe waits at least as long as streamer waits for the brokers.
    startup = container["startupProbe"]
    assert (
        startup["periodSeconds"] * startup["failureThreshold"] > overlay.run_args().startup_timeout
    )


def test_a_rollout_drains_before_the_kubelet_kills(overlay: Rendered) -> None:
    delivery = DeliverySettings.model_validate(overlay.config.get("delivery", {}))
    grace = overlay.pod["terminationGracePeriodSeconds"]
    # The drain, then the commit and the group leave (a few seconds), before SIGKILL.
    assert grace >= delivery.shutdown_grace_seconds + 10, (
        f"{overlay.name}: terminationGracePeriodSeconds {grace} leaves no room after "
        f"delivery.shutdown_grace_seconds {delivery.shutdown_grace_seconds}"
    )
    strategy = overlay.one("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert "replicas" not in overlay.one("Deployment")["spec"], "KEDA owns the replica count"


def test_rules_and_secrets_are_mounted_so_changes_reach_the_pod(overlay: Rendered) -> None:
    container, pod = overlay.container, overlay.pod
    assert all("subPath" not in m for m in container["volumeMounts"]), "subPath never updates"
    secret_mounts = {
        m["mountPath"]: {v["name"]: v for v in pod["volumes"]}[m["name"]]["secret"]
        for m in container["volumeMounts"]
        if "secret" in {v["name"]: v for v in pod["volumes"]}[m["name"]]
    }
    config = overlay.config
    files = [
        s["file"]
        for s in [
            *(d["token"] for d in config["destinations"].values()),
            *config["kafka"].get("secret_properties", {}).values(),
        ]
        if "file" in s
    ]
    assert files
    example = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((K8S / "secret.example.yaml").read_text())
    }
    for file in files:
        mount = str(Path(file).parent)
        assert mount in secret_mounts, f"{file} is not in a mounted Secret"
        # The example Secret has that key, with a placeholder only.
        secret = example[secret_mounts[mount]["secretName"]]
        value = secret["stringData"][Path(file).name]
        assert "REPLACE" in value, f"{secret['metadata']['name']}: not a placeholder"


def test_scaling_follows_the_consumer(overlay: Rendered) -> None:
    scaled = overlay.one("ScaledObject")
    spec, kafka = scaled["spec"], overlay.config["kafka"]
    partitions = int(scaled["metadata"]["annotations"]["streamer/partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert spec["scaleTargetRef"]["name"] == overlay.one("Deployment")["metadata"]["name"]
    offset_reset = kafka.get("properties", {}).get("auto.offset.reset", "earliest")
    topics = {t["name"] for t in overlay.config["topics"]}
    triggers = [t["metadata"] for t in spec["triggers"] if t["type"] == "kafka"]
    assert triggers
    for trigger in triggers:
        assert trigger["offsetResetPolicy"] == offset_reset
        assert trigger["consumerGroup"] == kafka["group_id"]
        assert trigger["bootstrapServers"] == kafka["bootstrap_servers"]
        assert trigger.get("allowIdleConsumers", "false") == "false"
    assert {t["topic"] for t in triggers} == topics


def test_disruptions_and_network(overlay: Rendered) -> None:
    pdb = overlay.one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    policy = overlay.one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    broker_ports = {
        int(a.rsplit(":", 1)[1]) for a in overlay.config["kafka"]["bootstrap_servers"].split(",")
    }
    registry = overlay.config.get("schema_registry", {}).get("url", "")
    registry_ports = {int(m) for m in re.findall(r":(\d+)", registry.split("//", 1)[-1])}
    assert {53, 443} | broker_ports | registry_ports <= egress_ports
    monitor = overlay.one("PodMonitor")["spec"]
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]


def test_the_image_runs_as_a_numeric_non_root_user_without_compilers() -> None:
    instructions = list(dockerfile_instructions())
    stages = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then a clean final stage"
    final = instructions[stages[-1] :]
    users = [rest for k, rest in final if k == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    final_text = " ".join(rest for _, rest in final)
    for compiler in ("gcc", "build-essential", "g++", "clang", "make "):
        assert compiler not in final_text, f"{compiler} in the final stage"
    assert dockerfile_exec_form("ENTRYPOINT") == ["streamer", "run"]
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore allow-lists what the image needs"


# --- the service's alerts and dashboard (README: Runbook) ----------------------------------

RULE_TESTS = K8S / "tests" / "prometheusrule.test.yaml"


def _alerts(overlay: Rendered) -> list[dict[str, Any]]:
    spec = overlay.one("PrometheusRule")["spec"]
    return [r for group in spec["groups"] for r in group["rules"] if "alert" in r]


def test_promtool_checks_and_unit_tests_the_alerts(overlay: Rendered, tmp_path: Path) -> None:
    # The rules as this overlay renders them, in the file the unit tests name.
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(overlay.one("PrometheusRule")["spec"]))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    check = run(tool("promtool"), "check", "rules", tmp_path / "rules.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_alerts(overlay))} rules found" in check.stdout, check.stdout
    test = run(tool("promtool"), "test", "rules", tmp_path / RULE_TESTS.name)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout, test.stdout


def test_every_alert_is_tested_firing_and_not_firing(overlay: Rendered) -> None:
    cases: dict[str, list[bool]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    names = {a["alert"] for a in _alerts(overlay)}
    assert set(cases) == names
    for name, fires in cases.items():
        assert True in fires and False in fires, f"{name}: test it firing and not firing"


def _github_anchor(heading: str) -> str:
    """The id GitHub gives a README heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_names_its_runbook_section(overlay: Rendered) -> None:
    readme = (ROOT / "README.md").read_text()
    runbook = readme.split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
    sections = dict(
        (_github_anchor(m.group(1)), m.group(2))
        for m in re.finditer(r"^### ([^\n]+)\n(.*?)(?=^### |\Z)", runbook, re.M | re.S)
    )
    alerts = _alerts(overlay)
    for alert in alerts:
        for key in ("summary", "description", "runbook_url"):
            assert alert["annotations"].get(key), f"{alert['alert']}: no {key}"
        assert alert["labels"]["severity"] in ("warning", "critical")
        anchor = alert["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == _github_anchor(alert["alert"]), alert["annotations"]["runbook_url"]
        assert anchor in sections, f"README's Runbook has no section for {alert['alert']}"
        for part in ("What it means", "What to look at", "What to do"):
            assert f"**{part}**" in sections[anchor], f"runbook {alert['alert']}: no {part}"
    assert len(sections) == len(alerts), "a runbook section without its alert"


def dashboard_of(overlay: Rendered) -> dict[str, Any]:
    config_map = overlay.named("ConfigMap", "streamer-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    dashboard: dict[str, Any] = json.loads(config_map["data"]["streamer.json"])
    return dashboard


def test_the_dashboard_ships_to_the_grafana_sidecar(overlay: Rendered) -> None:
    dashboard = dashboard_of(overlay)
    assert dashboard["uid"] == "streamer"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Destinations: incident.io", "Partitions", "Process"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            # every query is for the namespace chosen at the top
            assert 'namespace="$namespace"' in target["expr"], (panel["title"], target["expr"])
