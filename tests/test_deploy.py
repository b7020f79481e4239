"""The manifests in deploy/: valid for their APIs (offline), and in agreement with the image they run.

deploy/kubernetes/base is a kustomization (Deployment, Service, HorizontalPodAutoscaler) and
deploy/kubernetes/gpu an overlay of strategic-merge patches; the test renders both itself (a
renderer for the few kustomize features used here) and, where kubectl is installed, checks that
``kubectl kustomize`` renders the same. Core kinds are checked against kubernetes-validate's bundled
schemas; the KServe InferenceService against tests/schemas/, a schema derived from KServe's CRD
(scripts/kserve_schema.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from saliency.api import create_app
from saliency.api.config import ENV_PREFIX, Settings, load_settings
from saliency.models.weights import OFFLINE_ENV

sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from validate_deploy import (DEPLOY, K8S_VERSION, KSERVE, KSERVE_SCHEMA, KUSTOMIZATIONS, ROOT,  # noqa: E402
                             documents, kserve_errors, kserve_validator, problems, render)

MODEL_NAME = "demo"   # the served model: KServe's /v1/models/demo:predict


def variants() -> dict[str, list[dict]]:
    return {directory.name: render(directory) for directory in KUSTOMIZATIONS}


def one(resources: list[dict], kind: str) -> dict:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def pod_spec(resource: dict) -> dict:
    return resource["spec"]["predictor"] if resource["kind"] == "InferenceService" else resource["spec"]["template"]["spec"]


def workloads() -> list[tuple[str, dict]]:
    """Every resource that runs the image: each variant's Deployment and the InferenceService."""
    return ([(name, one(resources, "Deployment")) for name, resources in variants().items()]
            + [("kserve", doc) for doc in documents(KSERVE)])


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def image_port() -> int:
    exposed = re.findall(r"^EXPOSE (\d+)$", dockerfile(), re.M)
    bound = re.findall(r"--bind 0\.0\.0\.0:(\d+)", dockerfile())
    assert len(exposed) == 1 and bound == exposed, "the Dockerfile exposes and binds one port"
    return int(exposed[0])


def probe_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"no container port named {port}"
    return named[0]


# --- valid for their APIs -------------------------------------------------------------------

@pytest.mark.parametrize("variant", [d.name for d in KUSTOMIZATIONS])
def test_core_manifests_validate_against_the_bundled_kubernetes_schemas(variant):
    resources = variants()[variant]
    assert sorted(r["kind"] for r in resources) == ["Deployment", "HorizontalPodAutoscaler", "Service"]
    for resource in resources:  # strict: an unknown (misspelt) field fails; a kind with no schema raises
        assert kubernetes_validate.validate(resource, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_validation_rejects_a_misspelt_field():
    deployment = one(variants()["base"], "Deployment")
    container = pod_spec(deployment)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_inferenceservice_matches_kserves_crd():
    docs = documents(KSERVE)
    assert len(docs) == 1
    isvc = docs[0]
    errors = kserve_errors(isvc)
    assert not errors, f"{KSERVE} (fields outside spec.predictor are not in the trimmed schema): {errors}"
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", isvc["metadata"]["name"])  # KServe: a DNS-1035 label
    container, = isvc["spec"]["predictor"]["containers"]
    for name in ("image", "ports", "env", "resources", "readinessProbe", "livenessProbe"):
        assert name in container, name
    # Knative: one port, named for its protocol
    port, = container["ports"]
    assert port.get("name") in (None, "http1", "h2c")
    # a cold start loads the model: never scale to zero
    assert isvc["spec"]["predictor"].get("minReplicas", 0) >= 1


def test_the_kserve_schema_rejects_a_misspelt_field():
    validator = kserve_validator()
    isvc = documents(KSERVE)[0]
    isvc["spec"]["predictor"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 8000}}
    assert not validator.is_valid(isvc)
    assert "kserve/kserve" in json.loads(KSERVE_SCHEMA.read_text())["$comment"]


def test_the_ci_check_passes_and_names_what_it_finds(monkeypatch):
    """scripts/validate_deploy.py, which .ci/run runs, passes here and reports a misspelt field as one line."""
    assert problems() == []
    import validate_deploy

    real = validate_deploy.documents

    def misspelt(path):
        docs = real(path)
        for doc in docs:
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if "readinessProbe" in container:
                    container["readinesProbe"] = container.pop("readinessProbe")
        return docs

    monkeypatch.setattr(validate_deploy, "documents", misspelt)
    assert problems() == [f"deploy/kubernetes/{variant}: Deployment saliency: Additional properties are not "
                          "allowed ('readinesProbe' was unexpected)" for variant in ("base", "gpu")]


def test_every_manifest_is_checked():
    read: set[Path] = set()
    for directory in KUSTOMIZATIONS:
        render(directory, read)
    on_disk = {p.resolve() for p in DEPLOY.rglob("*.y*ml")}
    assert on_disk - {KSERVE.resolve()} == {p.resolve() for p in read}


@pytest.mark.parametrize("variant", [d.name for d in KUSTOMIZATIONS])
def test_kubectl_kustomize_renders_the_same(variant):
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if not (kubectl or kustomize):
        pytest.skip("neither kubectl nor kustomize is installed")
    command = [kubectl, "kustomize"] if kubectl else [kustomize, "build"]
    directory = DEPLOY / "kubernetes" / variant
    out = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60, check=True).stdout

    def canonical(node):  # order of list items aside (strategic merge may put new ones first)
        if isinstance(node, dict):
            return {k: canonical(v) for k, v in node.items()}
        if isinstance(node, list):
            items = [canonical(v) for v in node]
            return sorted(items, key=json.dumps) if all(isinstance(v, dict) for v in items) else items
        return node

    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    theirs = sorted((canonical(r) for r in yaml.safe_load_all(out) if r), key=key)
    ours = sorted((canonical(r) for r in render(directory)), key=key)
    assert theirs == ours


# --- in agreement with the image --------------------------------------------------------------

@pytest.mark.parametrize("name,resource", workloads(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_container_matches_the_image(name, resource):
    spec = pod_spec(resource)
    container, = spec["containers"]
    port = image_port()
    assert [p["containerPort"] for p in container["ports"]] == [port]
    # the health routes, each on the image's port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]
    assert all(probe_port(container, p["httpGet"]["port"]) == port for p in probes)
    if name != "kserve":  # the model loads at start: the startup probe waits for it, for minutes
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == "/readyz"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    else:
        assert container["livenessProbe"].get("initialDelaySeconds", 0) >= 30
    # the image's user
    user, group = re.search(r"^USER (\d+):(\d+)$", dockerfile(), re.M).groups()
    context = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    assert (context.get("runAsUser"), context.get("runAsGroup"), context.get("runAsNonRoot")) == (int(user), int(group), True)
    # requests (the autoscalers need them) and limits
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("name,resource", workloads(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_setting_is_one_the_service_reads(name, resource):
    container, = pod_spec(resource)["containers"]
    values = env(container)
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)} | {OFFLINE_ENV}
    assert {n for n in values if n.startswith(ENV_PREFIX)} <= known
    settings = load_settings(environ=values)  # and every value parses
    assert settings.model == MODEL_NAME
    if name == "kserve":  # KServe queues what gunicorn's threads cannot take, and times out as it does
        assert resource["spec"]["predictor"]["containerConcurrency"] == settings.workers * settings.threads
        assert resource["spec"]["predictor"]["timeout"] == settings.timeout
    else:  # a pod stopped by Kubernetes lets its requests in flight finish before it is killed
        grace = pod_spec(resource).get("terminationGracePeriodSeconds", 30)
        assert grace > settings.shutdown_seconds, "Kubernetes would kill requests the service lets finish"
    torch_threads = settings.torch_threads
    cpus = container["resources"]["requests"]["cpu"]
    assert torch_threads is not None and torch_threads <= int(cpus), "torch would use every core of the node"


def test_images_are_one_repository_tagged_with_the_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {}
    for name, resource in workloads():
        container, = pod_spec(resource)["containers"]
        repository, tag = container["image"].rsplit(":", 1)
        gpu = env(container).get("SALIENCY_DEVICE") == "cuda"
        images[name] = repository
        assert tag == (f"{version}-cuda" if gpu else version), name
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert (gpus == 1) == gpu, f"{name}: a GPU for the CUDA image, none otherwise"
    assert len(set(images.values())) == 1, images
    assert env(pod_spec(one(variants()["gpu"], "Deployment"))["containers"][0]).get("SALIENCY_DEVICE") == "cuda"


@pytest.mark.parametrize("variant", [d.name for d in KUSTOMIZATIONS])
def test_service_and_autoscaler_reach_the_deployment(variant):
    resources = variants()[variant]
    deployment, service, hpa = (one(resources, k) for k in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container, = pod_spec(deployment)["containers"]
    for port in service["spec"]["ports"]:
        assert probe_port(container, port["targetPort"]) == image_port()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == image_port() and annotations["prometheus.io/path"] == "/metrics"


def test_the_routes_the_manifests_name_answer():
    app = create_app({"model": MODEL_NAME, "TESTING": True})
    client = app.test_client()
    paths = {"/metrics"}
    for _, resource in workloads():
        container, = pod_spec(resource)["containers"]
        paths |= {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
                  if p in container}
    for path in sorted(paths):
        assert client.get(path).status_code == 200, path


def test_the_readme_names_what_is_there():
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\bdeploy/[\w./-]*\w", readme))
    assert {"deploy/kubernetes/base", "deploy/kubernetes/gpu", "deploy/kserve/inferenceservice.yaml"} <= named
    assert all((ROOT / path).exists() for path in named), named
    image = pod_spec(documents(KSERVE)[0])["containers"][0]["image"].rsplit(":", 1)[0]
    assert image in readme and f"/v1/models/{MODEL_NAME}:explain" in readme
