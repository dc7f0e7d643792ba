"""The Helm chart (helm/meterstream): lint, render, validate, and check what operators rely on.

Every ``ci/*-values.yaml`` is linted and rendered with the real helm; every rendered
manifest is validated against the Kubernetes schemas (kubernetes-validate, strict) or,
for the CRDs (KEDA ScaledObject, ServiceMonitor), against small schemas written here;
the rendered config file is accepted by ``meterstream check-config`` with the pod's own
environment. The template's guards (partition count, grace period, secrets) and the
values schema are proved by renders that must fail with the right message.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.chart

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "meterstream"
CI_DIR = CHART / "ci"
CI_VALUES = sorted(CI_DIR.glob("*-values.yaml"))
CI_IDS = [path.name.removesuffix("-values.yaml") for path in CI_VALUES]
RELEASE = "billing"
NAMESPACE = "metering"
FULLNAME = "billing-meterstream"

#: The Kubernetes versions manifests are validated against (kubernetes-validate ships
#: 1.25 to 1.37 offline): the chart's kubeVersion floor, and a recent release.
KUBERNETES_FLOOR = "1.25.0"
KUBERNETES_PINNED = "1.35.0"
#: helm built with `go install` has no ldflags and assumes Kubernetes 1.20, below the
#: chart's kubeVersion; renders say which version they target.
HELM_KUBE_VERSION = KUBERNETES_PINNED

CONFIG_PATH = "/etc/meterstream/meterstream.yaml"
METRICS_PORT = 9464
IMAGE_UID = 10001
#: The connector's default (connector/config.py ShutdownConfig).
DEFAULT_DRAIN_SECONDS = 20.0
#: Seconds after the drain that the connector needs to commit and leave the group.
EXIT_MARGIN_SECONDS = 5.0

# --------------------------------------------------------------------------- helm


@cache
def helm_binary() -> str:
    """helm where scripts/bootstrap.sh puts it ($METERSTREAM_CACHE/bin), else on PATH."""
    cache_dir = Path(os.environ.get("METERSTREAM_CACHE", Path.home() / ".cache" / "meterstream"))
    candidate = cache_dir / "bin" / "helm"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(
        f"helm not found at {candidate} nor on PATH: run scripts/bootstrap.sh (make test "
        "does), which builds it with `go install helm.sh/helm/v3/cmd/helm@<pinned version>`"
    )


def run_helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args, str(chart)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": "/nonexistent", "KUBECONFIG": "/nonexistent"},
    )


def _values_args(values: tuple[Path | dict[str, Any], ...], tmp: Path) -> list[str]:
    args: list[str] = []
    for index, item in enumerate(values):
        if isinstance(item, Path):
            path = item
        else:
            path = tmp / f"override-{index}.yaml"
            path.write_text(yaml.safe_dump(item))
        args += ["--values", str(path)]
    return args


def helm_template(
    tmp: Path, *values: Path | dict[str, Any], chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with these values files/overrides, in order."""
    return run_helm(
        "template",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        HELM_KUBE_VERSION,
        *_values_args(values, tmp),
        chart=chart,
    )


def render(tmp: Path, *values: Path | dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered manifests (test hooks included); fails the test if helm fails."""
    result = helm_template(tmp, *values)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(tmp: Path, *values: Path | dict[str, Any]) -> str:
    """helm's error output for values that must be refused."""
    result = helm_template(tmp, *values)
    assert result.returncode != 0, f"helm template accepted values it must refuse: {values}"
    return result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each ci values file's manifests, rendered once for the module."""
    tmp = tmp_path_factory.mktemp("ci")
    return {name: render(tmp, path) for name, path in zip(CI_IDS, CI_VALUES, strict=True)}


def ci_values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CI_DIR / f"{name}-values.yaml").read_text())
    return data


def default_values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


def one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in manifests)


def pod_spec(manifests: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, kind)["spec"]["template"]["spec"]
    return spec


def container(manifests: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    containers = pod_spec(manifests, kind)["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


def config_file(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = next(
        doc
        for doc in manifests
        if doc["kind"] == "ConfigMap" and "meterstream.yaml" in doc.get("data", {})
    )
    data: dict[str, Any] = yaml.safe_load(configmap["data"]["meterstream.yaml"])
    return data


def env_of(ctr: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in ctr.get("env", [])}


# --------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_helm_lint_strict(values: Path) -> None:
    result = run_helm(
        "lint", "--strict", "--kube-version", HELM_KUBE_VERSION, "--values", str(values)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


#: Every ci file renders exactly these kinds: the toggles do what their names say.
EXPECTED_KINDS = {
    "default": ["ConfigMap", "Deployment", "Pod", "Secret", "Service", "ServiceAccount"],
    "existing-secret": ["ConfigMap", "Deployment", "Pod", "Service", "ServiceAccount"],
    "keda": ["ConfigMap", "Deployment", "Pod", "ScaledObject", "Service", "ServiceAccount"],
    "hpa": [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Pod",
        "Service",
        "ServiceAccount",
    ],
    "kafka-sasl-ssl": ["ConfigMap", "Deployment", "Pod", "Service", "ServiceAccount"],
    "full": [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ],
}


def test_every_ci_file_has_expected_kinds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert sorted(rendered) == sorted(EXPECTED_KINDS)
    for name, manifests in rendered.items():
        assert kinds(manifests) == EXPECTED_KINDS[name], name


_METADATA = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "namespace": {"type": "string", "minLength": 1},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}

#: The fields of KEDA's ScaledObject (keda.sh/v1alpha1) this chart renders.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "properties": {"behavior": {"type": "object"}},
                            "additionalProperties": False,
                        }
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "kafka"},
                            # KEDA reads every trigger metadata value as a string.
                            "metadata": {
                                **_STRING_MAP,
                                "required": ["bootstrapServers", "consumerGroup", "lagThreshold"],
                            },
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string", "minLength": 1}},
                                "additionalProperties": False,
                            },
                        },
                    },
                },
            },
        },
    },
}

#: The fields of the Prometheus operator's ServiceMonitor (monitoring.coreos.com/v1) used.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _STRING_MAP},
                    "additionalProperties": False,
                },
            },
        },
    },
}

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
}


@pytest.mark.parametrize("name", CI_IDS)
@pytest.mark.parametrize("version", [KUBERNETES_FLOOR, KUBERNETES_PINNED])
def test_manifests_validate_against_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    for doc in rendered[name]:
        crd_schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd_schema is not None:
            jsonschema.validate(doc, crd_schema)
            continue
        # Raises on a schema violation and on a kind it has no schema for (never skipped).
        kubernetes_validate.validate(doc, version, strict=True)


def test_an_invalid_manifest_is_caught(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The validation above can fail: a misspelt field is refused in strict mode."""
    deployment = json.loads(json.dumps(one(rendered["default"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_PINNED, strict=True)
    scaled = json.loads(json.dumps(one(rendered["keda"], "ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


# --------------------------------------------------------------------------- the config file


def pod_environment(ctr: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the pod would see it (Secrets as placeholders)."""
    env: dict[str, str] = {}
    for item in ctr.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"from-secret-{ref['name']}-{ref['key']}"
    return env


def check_config(manifests: list[dict[str, Any]], ctr: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Run `meterstream check-config` on the rendered file with the container's env."""
    path = tmp / "meterstream.yaml"
    configmap = next(
        d for d in manifests if d["kind"] == "ConfigMap" and "meterstream.yaml" in d["data"]
    )
    path.write_text(configmap["data"]["meterstream.yaml"])
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("METERSTREAM_") and key != "STRIPE_API_KEY"
    }
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**inherited, **pod_environment(ctr)},
    )
    assert result.returncode == 0, result.stderr
    effective: dict[str, Any] = yaml.safe_load(result.stdout)
    return effective


@pytest.mark.parametrize("name", CI_IDS)
def test_rendered_config_is_accepted_by_check_config(
    rendered: dict[str, list[dict[str, Any]]], name: str, tmp_path: Path
) -> None:
    manifests = rendered[name]
    effective = check_config(manifests, container(manifests), tmp_path)
    values = ci_values(name)
    assert effective["kafka"]["bootstrap_servers"] == values["config"]["kafka"]["bootstrap_servers"]
    assert effective["stripe"]["api_key"] == "**********"  # from STRIPE_API_KEY, redacted
    assert effective["metrics"]["port"] == METRICS_PORT
    assert effective["metrics"]["enabled"] is True
    assert effective["logging"]["format"] == "json"
    expected_replicas = {
        "default": 1,
        "existing-secret": 3,
        "keda": 6,
        "hpa": 8,
        "kafka-sasl-ssl": 2,
        "full": 3,  # two pods and the backfill Job share the account budget
    }
    assert effective["rate_limit"]["replicas"] == expected_replicas[name]


def test_backfill_job_config_is_accepted_with_its_own_group(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    manifests = rendered["full"]
    job = container(manifests, "Job")
    effective = check_config(manifests, job, tmp_path)
    backfill = ci_values("full")["backfill"]
    assert effective["kafka"]["group_id"] == backfill["groupId"]
    assert effective["kafka"]["topics"] == backfill["topics"]
    assert effective["batching"]["linger_ms"] == 100  # extraEnv reaches the Job too
    assert job["args"] == [
        "run",
        "--config",
        CONFIG_PATH,
        "--workers",
        "1",
        "--until-idle",
        str(backfill["untilIdleSeconds"]),
    ]


def test_the_api_key_is_never_in_the_config(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    key = ci_values("default")["stripe"]["apiKey"]
    result = helm_template(tmp_path, CI_DIR / "default-values.yaml")
    assert key not in result.stdout  # only base64, in the Secret
    assert "api_key" not in config_file(rendered["default"]).get("stripe", {})
    message = render_error(
        tmp_path, CI_DIR / "default-values.yaml", {"config": {"stripe": {"api_key": key}}}
    )
    assert "api_key" in message


# --------------------------------------------------------------------------- the pod


@pytest.mark.parametrize("name", CI_IDS)
def test_security_context_is_locked_down(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    manifests = rendered[name]
    workloads = ["Deployment"] + (["Job"] if name == "full" else [])
    for kind in workloads:
        spec = pod_spec(manifests, kind)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == IMAGE_UID
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        ctr = container(manifests, kind)
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == IMAGE_UID
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # The read-only root needs one writable path: an emptyDir at /tmp.
        mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert volumes[mounts["/etc/meterstream"]]["configMap"]["name"] == FULLNAME
        assert "resources" in ctr
        assert ctr["resources"]["requests"]


@pytest.mark.parametrize("name", CI_IDS)
def test_probes_and_arguments(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    manifests = rendered[name]
    ctr = container(manifests)
    assert ctr["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    if name == "full":
        assert ctr["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert "enabled" not in ctr["startupProbe"]
    else:
        assert "startupProbe" not in ctr
    workers = ci_values(name).get("workers", 1)
    assert ctr["args"] == ["run", "--config", CONFIG_PATH, "--workers", str(workers)]
    assert ctr["image"] == "meterstream:0.1.0"  # the chart's appVersion


@pytest.mark.parametrize("name", CI_IDS)
def test_grace_period_exceeds_the_drain_deadline(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    manifests = rendered[name]
    drain = (
        config_file(manifests)
        .get("shutdown", {})
        .get("drain_timeout_seconds", DEFAULT_DRAIN_SECONDS)
    )
    for kind in ["Deployment"] + (["Job"] if name == "full" else []):
        grace = pod_spec(manifests, kind)["terminationGracePeriodSeconds"]
        assert grace > drain + EXIT_MARGIN_SECONDS


def test_config_change_rolls_the_pods(tmp_path: Path) -> None:
    base = CI_DIR / "default-values.yaml"

    def checksum(*extra: dict[str, Any]) -> str:
        deployment = one(render(tmp_path, base, *extra), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    original = checksum()
    assert re.fullmatch("[0-9a-f]{64}", original)
    assert checksum() == original  # deterministic
    assert checksum({"config": {"batching": {"linger_ms": 200}}}) != original
    assert checksum({"replicaCount": 1, "config": {"kafka": {"group_id": "other"}}}) != original
    # Values outside the config file leave it alone (no needless restarts).
    assert checksum({"resources": {"requests": {"cpu": "1"}}}) == original


def test_stripe_key_from_the_chart_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    manifests = rendered["default"]
    secret = one(manifests, "Secret")
    key = ci_values("default")["stripe"]["apiKey"]
    assert base64.b64decode(secret["data"]["api-key"]).decode() == key
    ref = env_of(container(manifests))["STRIPE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "api-key"}
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations  # a new key rolls the pods


@pytest.mark.parametrize("name", ["existing-secret", "keda", "hpa", "kafka-sasl-ssl", "full"])
def test_stripe_key_from_an_existing_secret(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    manifests = rendered[name]
    stripe = ci_values(name)["stripe"]
    assert "Secret" not in kinds(manifests)
    kinds_with_pods = ["Deployment"] + (["Job"] if name == "full" else [])
    for kind in kinds_with_pods:
        ref = env_of(container(manifests, kind))["STRIPE_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {
            "name": stripe["existingSecret"],
            "key": stripe.get("existingSecretKey", "api-key"),
        }


def test_kafka_sasl_password_and_ca_certificate(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    manifests = rendered["kafka-sasl-ssl"]
    ctr = container(manifests)
    ref = env_of(ctr)["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "kafka-credentials", "key": "sasl-password"}
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    assert mounts["kafka-tls"]["mountPath"] == "/etc/kafka-tls"
    assert mounts["kafka-tls"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-ca"
    kafka = config_file(manifests)["kafka"]
    assert kafka["secret_env"] == {"sasl.password": "KAFKA_SASL_PASSWORD"}
    # The dead-letter producer needs the same security settings as the consumer.
    for section in ("consumer", "producer"):
        assert kafka[section]["security.protocol"] == "SASL_SSL"
        assert kafka[section]["sasl.mechanism"] == "SCRAM-SHA-512"
        assert kafka[section]["ssl.ca.location"] == "/etc/kafka-tls/ca.crt"
    assert kafka["consumer"]["fetch.max.bytes"] == 52428800  # its own keys survive
    assert "fetch.max.bytes" not in kafka["producer"]


# --------------------------------------------------------------------------- scaling


def test_keda_never_scales_past_the_partitions(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    manifests = rendered["keda"]
    values = ci_values("keda")
    scaled = one(manifests, "ScaledObject")
    spec = scaled["spec"]
    assert spec["maxReplicaCount"] * values["workers"] <= values["kafka"]["partitions"]
    assert spec["maxReplicaCount"] == values["autoscaling"]["maxReplicas"]
    assert spec["scaleTargetRef"]["name"] == one(manifests, "Deployment")["metadata"]["name"]
    trigger = spec["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": "kafka.kafka.svc:9092",
        "consumerGroup": "meterstream",
        "topic": "usage",
        "lagThreshold": "5000",
        "activationLagThreshold": "10",
        "offsetResetPolicy": "earliest",
        "allowIdleConsumers": "false",
    }
    # The autoscaler owns the replica count.
    assert "replicas" not in one(manifests, "Deployment")["spec"]


def test_hpa_never_scales_past_the_partitions(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    manifests = rendered["hpa"]
    values = ci_values("hpa")
    hpa = one(manifests, "HorizontalPodAutoscaler")["spec"]
    assert hpa["maxReplicas"] <= values["kafka"]["partitions"]
    assert hpa["minReplicas"] == 2
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu", "memory"]
    assert "replicas" not in one(manifests, "Deployment")["spec"]


def test_keda_with_several_topics_and_authentication(tmp_path: Path) -> None:
    manifests = render(
        tmp_path,
        CI_DIR / "keda-values.yaml",
        {
            "config": {"kafka": {"topics": ["a", "b"]}},
            "autoscaling": {
                "minReplicas": 0,
                "keda": {"authenticationRef": "kafka-auth", "extraMetadata": {"tls": "enable"}},
            },
        },
    )
    trigger = one(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert "topic" not in trigger["metadata"]  # KEDA then measures every topic of the group
    assert trigger["metadata"]["tls"] == "enable"
    assert trigger["authenticationRef"] == {"name": "kafka-auth"}
    assert one(manifests, "ScaledObject")["spec"]["minReplicaCount"] == 0
    jsonschema.validate(one(manifests, "ScaledObject"), SCALED_OBJECT_SCHEMA)


def test_exactly_as_many_consumers_as_partitions_is_allowed(tmp_path: Path) -> None:
    base = CI_DIR / "default-values.yaml"
    manifests = render(
        tmp_path, base, {"replicaCount": 3, "workers": 2, "kafka": {"partitions": 6}}
    )
    assert one(manifests, "Deployment")["spec"]["replicas"] == 3
    assert config_file(manifests)["rate_limit"]["replicas"] == 3
    keda = {"enabled": True, "maxReplicas": 3}
    manifests = render(
        tmp_path, base, {"workers": 2, "kafka": {"partitions": 6}, "autoscaling": keda}
    )
    assert one(manifests, "ScaledObject")["spec"]["maxReplicaCount"] == 3
    # An explicit rate_limit.replicas wins over the chart's count.
    manifests = render(tmp_path, base, {"config": {"rate_limit": {"replicas": 7}}})
    assert config_file(manifests)["rate_limit"]["replicas"] == 7


#: Values that must be refused, and the words the message must contain.
REFUSED = {
    "autoscaling without partitions": (
        {"autoscaling": {"enabled": True}},
        "autoscaling needs kafka.partitions",
    ),
    "keda max above partitions": (
        {"kafka": {"partitions": 4}, "autoscaling": {"enabled": True, "maxReplicas": 5}},
        "autoscaling.maxReplicas (5) x workers (1) = 5 consumers exceeds kafka.partitions (4)",
    ),
    "hpa max above partitions": (
        {
            "kafka": {"partitions": 4},
            "autoscaling": {"enabled": True, "type": "hpa", "maxReplicas": 5},
        },
        "exceeds kafka.partitions (4)",
    ),
    "max x workers above partitions": (
        {
            "workers": 2,
            "kafka": {"partitions": 6},
            "autoscaling": {"enabled": True, "maxReplicas": 4},
        },
        "= 8 consumers exceeds kafka.partitions (6): the extra consumers would sit idle; "
        "lower autoscaling.maxReplicas to at most 3",
    ),
    "replicas x workers above partitions": (
        {"replicaCount": 3, "workers": 2, "kafka": {"partitions": 4}},
        "replicaCount (3) x workers (2) = 6 consumers exceeds kafka.partitions (4)",
    ),
    "min above max": (
        {
            "kafka": {"partitions": 4},
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2},
        },
        "autoscaling.minReplicas (3) is greater than autoscaling.maxReplicas (2)",
    ),
    "hpa to zero": (
        {
            "kafka": {"partitions": 4},
            "autoscaling": {"enabled": True, "type": "hpa", "minReplicas": 0},
        },
        "an HPA cannot scale to zero",
    ),
    "hpa without a target": (
        {
            "kafka": {"partitions": 4},
            "autoscaling": {
                "enabled": True,
                "type": "hpa",
                "hpa": {"targetCPUUtilizationPercentage": None},
            },
        },
        "needs autoscaling.hpa.targetCPUUtilizationPercentage",
    ),
    "grace equal to drain + 5": (
        {"terminationGracePeriodSeconds": 25},
        "terminationGracePeriodSeconds (25) must be greater than "
        "config.shutdown.drain_timeout_seconds (20) + 5",
    ),
    "grace below a longer drain": (
        {"config": {"shutdown": {"drain_timeout_seconds": 60}}},
        "terminationGracePeriodSeconds (30) must be greater than "
        "config.shutdown.drain_timeout_seconds (60) + 5",
    ),
    "no stripe key": ({"stripe": {"apiKey": ""}}, "the Stripe API key is missing"),
    "both stripe keys": (
        {"stripe": {"existingSecret": "meterstream-stripe"}},
        "set either stripe.apiKey or stripe.existingSecret, not both",
    ),
    "no bootstrap servers": (
        {"config": {"kafka": {"bootstrap_servers": ""}}},
        "config.kafka.bootstrap_servers is required",
    ),
    "secret env nobody sets": (
        {"config": {"kafka": {"secret_env": {"sasl.password": "KAFKA_SASL_PASSWORD"}}}},
        "reads sasl.password from the environment variable KAFKA_SASL_PASSWORD, which nothing sets",
    ),
    "secret env without a secret": (
        {"kafka": {"secretEnv": {"KAFKA_SASL_PASSWORD": "sasl-password"}}},
        "kafka.secretEnv needs kafka.existingSecret",
    ),
    "metrics disabled": (
        {"config": {"metrics": {"enabled": False}}},
        "config.metrics.enabled must stay true",
    ),
    "service monitor without service": (
        {"serviceMonitor": {"enabled": True}, "service": {"enabled": False}},
        "serviceMonitor.enabled needs service.enabled",
    ),
    "pdb with both bounds": (
        {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        "set either podDisruptionBudget.minAvailable or podDisruptionBudget.maxUnavailable",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_template_refuses_misconfiguration(case: str, tmp_path: Path) -> None:
    overrides, message = REFUSED[case]
    error = render_error(tmp_path, CI_DIR / "default-values.yaml", overrides)
    assert message in error, error


def test_grace_period_just_above_the_drain_is_accepted(tmp_path: Path) -> None:
    manifests = render(
        tmp_path, CI_DIR / "default-values.yaml", {"terminationGracePeriodSeconds": 26}
    )
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 26


#: Values the schema must refuse, and a fragment of helm's schema error.
SCHEMA_REFUSED = {
    "unknown top-level key": ({"replicas": 2}, "replicas"),
    "replicaCount as a word": ({"replicaCount": "two"}, "replicaCount"),
    "unknown config section": ({"config": {"kafak": {}}}, "kafak"),
    "unknown kafka key": ({"config": {"kafka": {"bootstrap": "x:9092"}}}, "bootstrap"),
    "batch above Stripe's limit": ({"config": {"batching": {"max_events": 500}}}, "max_events"),
    "bad log format": ({"config": {"logging": {"format": "xml"}}}, "format"),
    "unknown autoscaler": ({"autoscaling": {"type": "vpa"}}, "type"),
    "zero workers": ({"workers": 0}, "workers"),
    "partitions as a string": ({"kafka": {"partitions": "12"}}, "partitions"),
    "bad env var name": ({"kafka": {"secretEnv": {"kafka-password": "k"}}}, "kafka-password"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_REFUSED))
def test_values_schema_refuses_bad_values(case: str, tmp_path: Path) -> None:
    overrides, fragment = SCHEMA_REFUSED[case]
    error = render_error(tmp_path, CI_DIR / "default-values.yaml", overrides)
    assert "schema" in error, error
    assert fragment in error, error


# --------------------------------------------------------------------------- optional objects


def test_selectors_pick_exactly_the_consumers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    manifests = rendered["full"]
    deployment = one(manifests, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    consumer_labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = one(manifests, "Job")["spec"]["template"]["metadata"]["labels"]
    test_labels = one(manifests, "Pod")["metadata"]["labels"]

    def matches(sel: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in sel.items())

    assert "helm.sh/chart" not in selector
    assert "app.kubernetes.io/version" not in selector
    service = one(manifests, "Service")
    for sel in (
        selector,
        service["spec"]["selector"],
        one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        pod_spec(manifests)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"],
    ):
        assert matches(sel, consumer_labels)
        assert not matches(sel, job_labels)  # a backfill pod is not a consumer replica
        assert not matches(sel, test_labels)
    monitor = one(manifests, "ServiceMonitor")["spec"]
    assert matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert one(manifests, "ServiceMonitor")["metadata"]["labels"]["release"] == "prometheus"
    # The NetworkPolicy covers every pod of the release, backfill included.
    policy = one(manifests, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], consumer_labels)
    assert matches(policy["podSelector"]["matchLabels"], job_labels)


def test_network_policy_allows_dns_kafka_and_stripe_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    policy = one(rendered["full"], "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress = [
        (port["port"], port["protocol"], bool(rule.get("to")))
        for rule in policy["egress"]
        for port in rule["ports"]
    ]
    assert egress == [
        (53, "UDP", False),
        (53, "TCP", False),
        (9092, "TCP", True),
        (443, "TCP", False),
    ]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    sources = ingress["from"]
    assert sources[0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert sources[1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"


def test_helm_test_pod_checks_readyz_through_the_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    manifests = rendered["default"]
    pod = one(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = one(manifests, "Service")
    (ctr,) = pod["spec"]["containers"]
    url = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{METRICS_PORT}/readyz"
    assert url in ctr["command"][-1]
    assert "wget" in ctr["command"][-1]
    repository, tag = ctr["image"].split(":")
    assert repository == "busybox"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True


def test_pdb_and_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    manifests = rendered["full"]
    assert one(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    job = one(manifests, "Job")
    assert job["metadata"]["name"] == f"{FULLNAME}-backfill-1"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] == 86400


# --------------------------------------------------------------------------- dashboard


#: Every metric the connector exports (connector/metrics.py), without the
#: ``meterstream_`` prefix; histograms also expose _bucket, _sum and _count.
COUNTERS = {
    "records_consumed_total",
    "events_sent_total",
    "batches_total",
    "dead_letters_total",
    "retries_total",
    "session_renewals_total",
    "commits_total",
    "rebalances_total",
    "meter_preflight_failures_total",
}
GAUGES = {
    "requests_in_flight",
    "session_expires_in_seconds",
    "assigned_partitions",
    "consumer_lag_records",
    "paused_partitions",
    "buffered_records",
    "build_info",
    "meters",
}
HISTOGRAMS = {"request_duration_seconds", "batch_size_events"}
KNOWN_SERIES = {f"meterstream_{name}" for name in COUNTERS | GAUGES} | {
    f"meterstream_{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "dashboards" / "meterstream.json").read_text())
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_queries_only_exported_metrics() -> None:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    used: set[str] = set()
    for expr in exprs + variables:
        names = set(re.findall(r"\bmeterstream_[a-z_]+", expr))
        assert names, f"no meterstream metric in {expr!r}"
        assert names <= KNOWN_SERIES, f"unknown metrics {names - KNOWN_SERIES} in {expr!r}"
        assert expr.count("(") == expr.count(")"), expr
        used |= names
    # Throughput, lag, DLQ by reason, latency percentiles, in-flight, session expiry,
    # batches, retries, rebalances, commits: every exported series has a panel.
    unused = KNOWN_SERIES - used - {"meterstream_request_duration_seconds_sum"}
    unused -= {"meterstream_request_duration_seconds_count"}
    assert not unused, f"exported but not on the dashboard: {sorted(unused)}"
    latency = [e for e in exprs if "request_duration_seconds_bucket" in e]
    assert {q for e in latency for q in re.findall(r"histogram_quantile\((0\.\d+)", e)} >= {
        "0.50",
        "0.95",
        "0.99",
    }
    assert any("by (reason)" in e and "dead_letters_total" in e for e in exprs)
    assert any("by (topic, partition)" in e and "consumer_lag_records" in e for e in exprs)


def test_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] == "meterstream"
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["title"]
            assert panel["description"]
            for target in panel["targets"]:
                assert 'namespace=~"$namespace"' in target["expr"]


def test_dashboard_configmap_carries_the_file(rendered: dict[str, list[dict[str, Any]]]) -> None:
    configmap = next(
        doc
        for doc in rendered["full"]
        if doc["kind"] == "ConfigMap" and "meterstream.json" in doc["data"]
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["meterstream.json"]) == dashboard()


# --------------------------------------------------------------------------- docs and schema


def _leaves(data: Any, schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of values.yaml, down to the schema's documented keys.

    A map whose keys the schema does not enumerate (resources, labels, security contexts:
    Kubernetes objects passed through) counts as one value.
    """
    if isinstance(data, dict) and data and "properties" in schema:
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            yield from _leaves(value, schema["properties"].get(key, {}), path)
    else:
        yield prefix


def value_paths() -> list[str]:
    return list(_leaves(default_values(), values_schema()))


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        assert part in node.get("properties", {}), f"{path}: not in the schema"
        node = node["properties"][part]
    return node


def values_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return data


def test_schema_describes_every_value() -> None:
    schema = values_schema()
    leaves = value_paths()
    assert len(leaves) > 80
    for path in leaves:
        assert _schema_at(schema, path).get("description"), f"{path}: no description"

    def walk(node: dict[str, Any], where: str) -> None:
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{where}{key}: no description"
            walk(child, f"{where}{key}.")
            items = child.get("items")
            if isinstance(items, dict):
                walk(items, f"{where}{key}[].")

    walk(schema, "")
    assert schema["additionalProperties"] is False


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    missing = [path for path in value_paths() if path not in rows]
    assert not missing, f"values missing from the README table: {missing}"
    assert "helm install" in readme
    assert re.search(r"kubectl (-n \S+ )?create secret generic", readme)
    assert "dashboards/meterstream.json" in readme


def test_readme_install_command_works(tmp_path: Path) -> None:
    """The README's `kubectl create secret` + `helm install`, rendered (no cluster here)."""
    readme = (CHART / "README.md").read_text()
    block = readme.split("## Install", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    secret_cmd = shlex.split(next(line for line in lines if "create secret generic" in line))
    install = shlex.split(next(line for line in lines if line.startswith("helm install")))
    secret_name = secret_cmd[secret_cmd.index("generic") + 1]
    literal = next(arg for arg in secret_cmd if arg.startswith("--from-literal="))
    secret_key = literal.removeprefix("--from-literal=").split("=", 1)[0]
    _, _, release, chart, *flags = install
    assert (REPO / chart).resolve() == CHART
    result = subprocess.run(
        [
            helm_binary(),
            "template",
            release,
            str(CHART),
            "--kube-version",
            HELM_KUBE_VERSION,
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    ctr = container(manifests)
    ref = env_of(ctr)["STRIPE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret_name, "key": secret_key}
    assert ctr["image"].startswith("registry.example.com/meterstream:")
    assert config_file(manifests)["kafka"]["bootstrap_servers"] == "kafka.kafka.svc:9092"


def test_schema_config_mirrors_the_connector_config() -> None:
    """config.* in the schema has exactly the connector's keys (stripe.api_key excepted)."""
    from pydantic import BaseModel

    from connector.config import MeterstreamConfig

    config = _schema_at(values_schema(), "config")
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(MeterstreamConfig.model_fields)
    for section, field in MeterstreamConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        keys = set(model.model_fields) - ({"api_key"} if section == "stripe" else set())
        node = config["properties"][section]
        assert set(node["properties"]) == keys, section
        assert node["additionalProperties"] is False, section


def test_notes_render_for_every_ci_file(tmp_path: Path) -> None:
    """NOTES.txt only renders at install; render it as a template of a copy of the chart."""
    chart = tmp_path / "meterstream"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes-probe.yaml").write_text(
        '{{- define "notesProbe.body" }}' + notes + "{{ end }}\n"
        'notes: {{ include "notesProbe.body" . | toJson }}\n'
    )
    for values in CI_VALUES:
        result = helm_template(tmp_path, values, chart=chart)
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d and "notes" in d]
        (doc,) = docs
        text = doc["notes"]
        assert f"kubectl -n {NAMESPACE} rollout status deployment/{FULLNAME}" in text
        assert "/readyz" in text
        if "autoscaling" not in ci_values(values.name.removesuffix("-values.yaml")):
            assert "--set replicaCount=N" in text


# --------------------------------------------------------------------------- the image


def test_image_matches_the_chart() -> None:
    """The Dockerfile's final stage runs what the chart expects (uid, port, config path)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    final = dockerfile.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001:10001$", final, flags=re.MULTILINE)
    assert re.search(rf"^EXPOSE {METRICS_PORT}$", final, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["meterstream"]' in final
    assert f'CMD ["run", "--config", "{CONFIG_PATH}"]' in final
    labels = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", final))
    assert {"title", "description", "version", "revision", "licenses", "created"} <= labels
    assert "python:3.11" in dockerfile
    assert "-slim" in dockerfile
    assert dockerfile.count("\nFROM ") == 2  # builder and final
