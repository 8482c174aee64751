"""platform/compose and platform/k8s: they parse, match their schemas (Kubernetes' through
kubernetes-validate, compose-spec's through the copy check-jsonschema vendors, both
offline), and agree with the code they run.

No Docker or Kubernetes here: the checks read the files. Known environment variables,
served paths and the served port come from the code (settings.py, the entry point, the
Dockerfile, the Ninja API), so renaming a setting or a route breaks this test.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llmgateway.addresses import targets_parse

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ROOT / "platform"
COMPOSE = PLATFORM / "compose"
K8S = PLATFORM / "k8s"
# The image name the manifests use; kustomization.yaml's `images:` rewrites it.
GATEWAY_IMAGE = "llmgateway"
# Variables for a program in the image other than settings.py and the entry point:
# name -> (module, file) whose source must read it.
THIRD_PARTY_ENV = {"FORWARDED_ALLOW_IPS": ("uvicorn", "config.py")}
# A run this long of key-like characters is what generated secrets look like.
SECRET_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{20,}")
PLACEHOLDER = "REPLACE_ME"
# The Kubernetes version whose schemas the manifests must match (kubernetes-validate ships
# them; 1.30 is the oldest release still supported by the major clouds).
K8S_VERSION = "1.30.0"

YAML_FILES = sorted(
    p for d in (COMPOSE, K8S) for p in d.rglob("*") if p.suffix in {".yaml", ".yml"}
)


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def _k8s_objects() -> list[dict[str, Any]]:
    return [doc for p in YAML_FILES if p.is_relative_to(K8S) for doc in _load(p)]


def _k8s(kind: str) -> list[dict[str, Any]]:
    return [o for o in _k8s_objects() if o.get("kind") == kind]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


@cache
def _known_env() -> frozenset[str]:
    """Every variable settings.py, tracing.py (OTEL_*) or the image's entry point reads."""
    settings = (ROOT / "llmgateway" / "settings.py").read_text()
    names = set(re.findall(r'\benv_(?:str|bool|int|float|list)\(\s*"([A-Z0-9_]+)"', settings))
    names |= set(re.findall(r'os\.environ(?:\.get\(|\[)\s*"([A-Z0-9_]+)"', settings))
    tracing = (ROOT / "llmgateway" / "tracing.py").read_text()
    names |= set(re.findall(r'\benviron(?:\.get\(|\[)\s*"(OTEL_[A-Z0-9_]+)"', tracing))
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", entrypoint))
    # The regexes still match the code: a few names every deployment sets.
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "API_KEY_PEPPER", "TOKENIZER_PATH"} <= names
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER"} <= names
    return frozenset(names)


def _served_port() -> int:
    """The port the image serves on when PORT is not overridden."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    ports = {
        int(re.search(r"\bPORT=(\d+)", dockerfile).group(1)),
        int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1)),
        int(re.search(r"\$\{PORT:-(\d+)\}", entrypoint).group(1)),
    }
    assert len(ports) == 1, f"Dockerfile ENV/EXPOSE and the entry point disagree: {ports}"
    return ports.pop()


@cache
def _get_paths() -> frozenset[str]:
    """Paths the gateway answers GET on (from its OpenAPI schema), routed by urls.py."""
    from django.urls import resolve

    from llmgateway.urls import api

    paths = api.get_openapi_schema()["paths"]
    gets = {path for path, ops in paths.items() if "get" in ops and "{" not in path}
    for path in gets:
        resolve(path)
    return frozenset(gets)


def _default(value: Any) -> str:
    """A compose value with `${NAME:-default}` interpolation resolved to its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def _pod_specs() -> Iterator[dict[str, Any]]:
    """The pod spec of every workload in platform/k8s."""
    for obj in _k8s_objects():
        if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _gateway_containers() -> list[dict[str, Any]]:
    return [
        c
        for pod in _pod_specs()
        for c in pod.get("initContainers", []) + pod["containers"]
        if c["image"] == GATEWAY_IMAGE
    ]


def _k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets: env plus the ConfigMaps and Secrets of envFrom."""
    sources = {("ConfigMap", o["metadata"]["name"]): o.get("data", {}) for o in _k8s("ConfigMap")}
    sources |= {("Secret", o["metadata"]["name"]): o.get("stringData", {}) for o in _k8s("Secret")}
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in ref else "Secret"
        name = (ref.get("configMapRef") or ref["secretRef"])["name"]
        assert (kind, name) in sources, f"{container['name']}: no {kind} {name} in platform/k8s"
        env |= sources[(kind, name)]
    env |= {e["name"]: e.get("value", "") for e in container.get("env", [])}
    return env


def _gateway_deployment() -> dict[str, Any]:
    (deployment,) = [
        o
        for o in _k8s("Deployment")
        if any(c["image"] == GATEWAY_IMAGE for c in o["spec"]["template"]["spec"]["containers"])
    ]
    return deployment


def _check_shared_backends(env: dict[str, str], where: str) -> None:
    assert re.match(r"postgres(ql)?://", env.get("DATABASE_URL", "")), f"{where}: DATABASE_URL"
    assert re.match(r"rediss?://", env.get("REDIS_URL", "")), f"{where}: REDIS_URL"
    assert env.get("SECRET_KEY") and env.get("API_KEY_PEPPER"), f"{where}: SECRET_KEY, pepper"
    assert env.get("DEBUG") == "false", f"{where}: DEBUG must be false"


def _check_env_names(env: dict[str, str], where: str) -> None:
    unknown = set(env) - _known_env() - set(THIRD_PARTY_ENV)
    assert not unknown, f"{where} sets variables nothing reads: {sorted(unknown)}"


# ---- every file ----------------------------------------------------------------------------


def test_there_are_manifests_to_check():
    assert COMPOSE / "compose.yaml" in YAML_FILES
    assert K8S / "kustomization.yaml" in YAML_FILES


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(PLATFORM)))
def test_yaml_parses(path):
    docs = _load(path)
    assert docs and all(isinstance(d, dict) for d in docs)
    if path.is_relative_to(K8S) and path.name != "kustomization.yaml":
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")


def test_platform_is_not_a_python_package():
    # `platform` is a stdlib module; a package of that name at the root would shadow it.
    assert not list(PLATFORM.rglob("__init__.py"))


def test_third_party_variables_are_read_where_claimed():
    for name, (module, filename) in THIRD_PARTY_ENV.items():
        spec = importlib.util.find_spec(module)
        source = Path(spec.submodule_search_locations[0], filename).read_text()
        assert f'"{name}"' in source, f"{module}/{filename} no longer reads {name}"


# ---- compose ---------------------------------------------------------------------------------


def test_compose_gateway_settings_exist_and_share_backends():
    services = _compose()["services"]
    for name in ("gateway", "migrate"):
        env = services[name]["environment"]
        assert isinstance(env, dict), "use the mapping form of `environment`"
        _check_env_names(env, f"compose service {name}")
    _check_shared_backends(services["gateway"]["environment"], "compose gateway")


def test_compose_gateway_health_and_port():
    services = _compose()["services"]
    gateway = services["gateway"]
    port = int(_default(gateway["environment"].get("PORT", _served_port())))
    assert port == _served_port()
    check = " ".join(gateway["healthcheck"]["test"])
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", check)
    assert url and int(url.group(1)) == port
    assert url.group(2) == "/health/ready" and url.group(2) in _get_paths()
    assert str(port) in [str(p) for p in gateway["expose"]]
    nginx = (COMPOSE / "nginx.conf").read_text()
    assert re.search(rf"server gateway:{port}\b", nginx)


def test_compose_ordering_and_gpu():
    services = _compose()["services"]
    gateway_deps = services["gateway"]["depends_on"]
    assert gateway_deps["migrate"]["condition"] == "service_completed_successfully"
    assert gateway_deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "migrate" in " ".join(services["migrate"]["entrypoint"])
    env = services["gateway"]["environment"]
    gpus = []
    for target in targets_parse(_default(env["TRITON_SERVER_URLS"])):
        triton = services[target.host]
        assert f"--grpc-port={target.port}" in triton["command"]
        (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
        assert "gpu" in device["capabilities"]
        gpus.append(_default(device["device_ids"][0]))
        assert "trtllm" in _default(triton["image"])
    # Two Tritons, each on a GPU of its own.
    assert len(gpus) == 2 and len(set(gpus)) == 2


def test_compose_stop_grace_outlasts_a_request():
    gateway = _compose()["services"]["gateway"]
    timeout = float(_default(gateway["environment"]["GATEWAY_REQUEST_TIMEOUT"]))
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace and int(grace.group(1)) > timeout


def test_compose_env_example_holds_no_secrets():
    example = (COMPOSE / "env.example").read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", example, re.M))
    for name in ("SECRET_KEY", "API_KEY_PEPPER", "POSTGRES_PASSWORD"):
        assert values[name] == "", f"env.example: {name} must be empty"
    # Every variable compose.yaml interpolates is documented there.
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (COMPOSE / "compose.yaml").read_text()))
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, re.M))
    assert used <= documented, sorted(used - documented)


# ---- kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_existing_files_and_leaves_out_the_secret_template():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, f"kustomization.yaml lists missing files: {missing}"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    templates = {name for name in on_disk if name.endswith(".example.yaml")}
    assert templates == {"secret.example.yaml"}
    assert set(listed) == on_disk - templates, "every manifest but the templates is applied"
    assert GATEWAY_IMAGE in [i["name"] for i in kustomization["images"]]


def test_secret_template_holds_placeholders_only():
    secrets = _k8s("Secret")
    assert secrets
    for secret in secrets:
        assert "data" not in secret, "use stringData with placeholders, never encoded values"
        for name, value in secret["stringData"].items():
            assert PLACEHOLDER in value, f"{name}: every value must carry {PLACEHOLDER}"
            leftover = SECRET_LIKE.findall(value.replace(PLACEHOLDER, ""))
            assert not leftover, f"{name} looks like a real secret: {leftover}"


def test_k8s_gateway_settings_exist_and_share_backends():
    containers = _gateway_containers()
    assert {c["name"] for c in containers} >= {"gateway", "migrate", "wait-for-migrations"}
    for container in containers:
        env = _k8s_env(container)
        _check_env_names(env, f"k8s container {container['name']}")
        _check_shared_backends(env, f"k8s container {container['name']}")


def test_k8s_gateway_probes_and_port():
    deployment = _gateway_deployment()
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = int(_k8s_env(container).get("PORT", _served_port()))
    assert port == _served_port()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port in named.values()
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in _get_paths(), f"{probe}: no GET {get['path']}"
        assert named.get(get["port"], get["port"]) == port, f"{probe}: port {get['port']}"
    (service,) = [s for s in _k8s("Service") if s["metadata"]["name"] == GATEWAY_IMAGE]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for p in service["spec"]["ports"]:
        assert named.get(p["targetPort"], p["targetPort"]) == port


def test_k8s_gateway_is_scraped_where_it_serves_metrics():
    from django.urls import resolve

    template = _gateway_deployment()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _served_port()
    path = annotations["prometheus.io/path"]
    assert resolve(path).route == path.lstrip("/")  # a route the gateway serves
    # The multiprocess directory of several workers goes under /tmp: writable there.
    (container,) = template["spec"]["containers"]
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_k8s_gateway_runs_as_the_image_user_read_only():
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]


def test_k8s_termination_grace_outlasts_prestop_and_a_request():
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = (ROOT / "llmgateway" / "settings.py").read_text()
    default = re.search(r'env_float\("GATEWAY_REQUEST_TIMEOUT", ([\d.]+)\)', settings).group(1)
    timeout = float(_k8s_env(container).get("GATEWAY_REQUEST_TIMEOUT", default))
    sleep_command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > timeout + float(sleep_command[1])


def test_k8s_scaling_objects_target_the_gateway():
    deployment = _gateway_deployment()
    name = deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (hpa,) = _k8s("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert hpa["spec"]["minReplicas"] >= 2
    (pdb,) = [p for p in _k8s("PodDisruptionBudget") if p["metadata"]["name"] == name]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _triton_service_and_deployment() -> tuple[dict[str, Any], dict[str, Any], int]:
    """The Service the gateway's TRITON_SERVER_URLS names, the workload behind it, its port."""
    (container,) = _gateway_deployment()["spec"]["template"]["spec"]["containers"]
    (target,) = targets_parse(_k8s_env(container)["TRITON_SERVER_URLS"])
    (service,) = [s for s in _k8s("Service") if s["metadata"]["name"] == target.host]
    (triton,) = [
        o
        for o in _k8s("Deployment") + _k8s("StatefulSet")
        if service["spec"]["selector"].items()
        <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    return service, triton, target.port


def test_k8s_gateway_reaches_a_gpu_triton():
    service, triton, port = _triton_service_and_deployment()
    (grpc,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    (server,) = triton["spec"]["template"]["spec"]["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports.get(grpc["targetPort"], grpc["targetPort"]) == 8001
    assert "--grpc-port=8001" in server["args"]


def test_k8s_tritons_are_a_fleet_behind_a_headless_service():
    """Two replicas; the gateway resolves the Service's name to each pod's address (a
    ClusterIP Service would give one virtual IP, and gRPC would stick to one pod)."""
    service, triton, _ = _triton_service_and_deployment()
    assert service["spec"]["clusterIP"] == "None"
    assert triton["spec"]["replicas"] == 2
    # Updated one pod at a time, without needing a spare GPU for a surge pod.
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    (pdb,) = [
        p
        for p in _k8s("PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items()
        <= triton["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_k8s_triton_pods_are_locked_down_on_gpu_nodes_with_guaranteed_qos():
    _, triton, _ = _triton_service_and_deployment()
    pod = triton["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["nodeSelector"] and any("gpu" in label for label in pod["nodeSelector"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        # Guaranteed QoS: every container's requests equal its limits, CPU and memory set.
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"])
        assert resources["requests"] == resources["limits"]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_k8s_only_gateway_pods_reach_triton():
    _, triton, _ = _triton_service_and_deployment()
    labels = triton["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in _k8s("NetworkPolicy") if _selects(p, labels)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (server,) = triton["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    gateway_labels = _gateway_deployment()["spec"]["template"]["metadata"]["labels"]
    allowed: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            allowed.setdefault(ports.get(port["port"], port["port"]), []).extend(rule["from"])
    (grpc_from,) = allowed.pop(8001)  # inference: the gateway pods, nothing else
    assert set(grpc_from) == {"podSelector"}
    assert grpc_from["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    # Beside it, only the metrics port (for Prometheus); never from every pod.
    assert set(allowed) <= {8002}
    for sources in allowed.values():
        assert all("namespaceSelector" in source for source in sources)


def test_k8s_triton_metrics_are_scraped():
    _, triton, _ = _triton_service_and_deployment()
    template = triton["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (server,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert f"--metrics-port={ports['metrics']}" in server["args"]
    assert annotations["prometheus.io/path"] == "/metrics"


# ---- schemas ---------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}: {doc['kind']} {doc['metadata']['name']}", doc)
        for p in YAML_FILES
        if p.is_relative_to(K8S) and p.name != "kustomization.yaml"
        for doc in _load(p)
    ]


@pytest.mark.parametrize(
    ("where", "document"), _k8s_documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_k8s_manifests_match_the_kubernetes_schema(where, document):
    """Strict: an unknown field (a typo) fails too, not only a wrong type."""
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_kubernetes_schema_check_catches_a_typo():
    deployment = copy.deepcopy(_gateway_deployment())
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _compose_schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_matches_the_compose_spec_schema():
    """The compose-spec JSON schema that check-jsonschema vendors (no network)."""
    assert _compose_schema_errors(_compose()) == []
    broken = copy.deepcopy(_compose())
    broken["services"]["gateway"]["stop_grace_periodd"] = "660s"
    assert _compose_schema_errors(broken)
