"""Validate the manifests in deploy/ offline: the core kinds against kubernetes-validate's bundled schemas
(strictly: an unknown field fails), the KServe InferenceService against the schema derived from KServe's CRD.

    python scripts/validate_deploy.py        # what .ci/run runs; exit 1 and one line per problem if any

deploy/kubernetes/base is a kustomization and deploy/kubernetes/gpu an overlay of strategic-merge
patches: both are rendered here (the few kustomize features they use), so each resource is checked
as it would be applied. tests/test_deploy.py uses the same rendering and checks, and more: that the
manifests agree with the image they run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [DEPLOY / "kubernetes" / "base", DEPLOY / "kubernetes" / "gpu"]
KSERVE = DEPLOY / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = ROOT / "tests" / "schemas" / "kserve-inferenceservice-v1beta1.json"  # scripts/kserve_schema.py
K8S_VERSION = "1.32"  # bundled by kubernetes-validate 1.32 and later (pyproject.toml's test extra)

#: Strategic merge: the key that identifies an item of these lists (other lists are replaced).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "ports": "containerPort",
              "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name"}


class RenderError(ValueError):
    """A kustomization this renderer cannot follow, or a patch that patches nothing."""


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base, patch, key: str | None = None):
    """``patch`` laid over ``base`` as Kubernetes' strategic merge does for the fields used here."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = merge(base.get(name), value, name)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        by = MERGE_KEYS[key]
        out = list(base)
        for item in patch:
            at = [i for i, old in enumerate(out) if old[by] == item[by]]
            if at:
                out[at[0]] = merge(out[at[0]], item)
            else:
                out.append(item)
        return out
    return patch


def render(directory: Path, read: set[Path] | None = None) -> list[dict]:
    """The resources a kustomization makes; every file it reads is added to ``read``."""
    read = set() if read is None else read
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    read.add(path)
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        raise RenderError(f"{path}: only resources and patches are rendered here, not {sorted(unknown)}")
    resources: list[dict] = []
    for entry in kustomization["resources"]:
        target = directory / entry
        if target.is_dir():
            resources += render(target, read)
        else:
            resources += documents(target)
            read.add(target.resolve())
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{path}: only patches given by path")
        patch_path = directory / entry["path"]
        read.add(patch_path.resolve())
        for patch in documents(patch_path):
            at = [i for i, r in enumerate(resources)
                  if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
            if len(at) != 1:
                raise RenderError(f"{patch_path}: patches no resource")
            resources[at[0]] = merge(resources[at[0]], patch)
    return resources


def kserve_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(KSERVE_SCHEMA.read_text()))


def kserve_errors(resource: dict) -> list[str]:
    """What KServe's InferenceService schema finds wrong in ``resource`` (fields outside spec.predictor are not in it)."""
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator().iter_errors(resource)]


def problems() -> list[str]:
    """Every manifest rendered and checked; one line per problem."""
    found = []
    for directory in KUSTOMIZATIONS:
        name = directory.relative_to(ROOT)
        try:
            resources = render(directory)
        except RenderError as exc:
            found.append(str(exc))
            continue
        for resource in resources:  # strict: an unknown (misspelt) field fails; a kind with no schema raises
            try:
                kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                found.append(f"{name}: {resource['kind']} {resource['metadata']['name']}: "
                             f"{str(exc).splitlines()[0]}")
    for resource in documents(KSERVE):
        found += [f"{KSERVE.relative_to(ROOT)}: {error}" for error in kserve_errors(resource)]
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(f"validate-deploy: {line}", file=sys.stderr)
    if not found:
        print(f"validate-deploy: every manifest in deploy/ is valid (Kubernetes {K8S_VERSION}, KServe v1beta1)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
