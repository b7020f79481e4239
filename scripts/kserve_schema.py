"""Write the JSON schema tests/schemas/ holds for KServe's InferenceService, from KServe's CRD.

    python scripts/kserve_schema.py serving.kserve.io_inferenceservices.yaml v0.20.0 \
        > tests/schemas/kserve-inferenceservice-v1beta1.json

The CRD is config/crd/full/serving.kserve.io_inferenceservices.yaml in github.com/kserve/kserve
(Apache License 2.0). Kept: ``spec.predictor`` with its pod fields and custom containers; left out:
the predictor's model-format fields (sklearn, pytorch, ...), ``workerSpec``, the explainer,
transformer and canary components, and ``status``. The CRD's OpenAPI becomes JSON Schema: an
integer-or-string field is one or the other, and an object lists its fields exhaustively (as the
API server's strict field validation, kubectl's default, treats unknown ones) unless the CRD keeps
unknown fields.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

LEFT_OUT = {"huggingface", "lightgbm", "model", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow",
            "triton", "xgboost", "workerSpec"}


def to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()
           if key not in ("x-kubernetes-validations", "nullable")}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def trimmed(crd: dict, source: str) -> dict:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    predictor = spec["properties"]["predictor"]
    predictor["properties"] = {k: v for k, v in predictor["properties"].items() if k not in LEFT_OUT}
    spec["properties"] = {"predictor": predictor}
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "status"}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return {
        "$comment": (f"Derived from KServe's CRD serving.kserve.io_inferenceservices.yaml ({source}), "
                     "github.com/kserve/kserve, Apache License 2.0, by scripts/kserve_schema.py: "
                     "spec.predictor only, without its model-format fields and workerSpec."),
        **to_json_schema(schema),
    }


def main(argv: list[str]) -> int:
    path, source = argv
    with open(path) as f:
        crd = yaml.safe_load(f)
    json.dump(trimmed(crd, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
