"""Every manifest, in the module folders and as each overlay renders, against the Kubernetes
schemas (kubernetes-validate --strict: unknown fields are errors) for the oldest and newest
supported versions, and the custom resources against the fields their operators require."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest

from tests.deploy.support import KUBERNETES_VERSIONS, Doc, describe, kind_of, sources

#: API groups served by Kubernetes itself (schemas in kubernetes-validate).
_BUILTIN_SUFFIX = ".k8s.io"


def is_builtin(doc: Doc) -> bool:
    api_version = str(doc["apiVersion"])
    group = api_version.split("/")[0] if "/" in api_version else ""
    return "." not in group or group.endswith(_BUILTIN_SUFFIX)


#: host:port[,host:port...] (KEDA's redis-sentinel ``addresses``).
_ADDRESSES = r"^[^:,]+:[0-9]+(,[^:,]+:[0-9]+)*$"
_INTERVAL = {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}},
}
_SELECTOR = {
    "type": "object",
    "minProperties": 1,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}

#: What the Prometheus Operator and KEDA require of their resources (their CRDs' required
#: fields and types, plus the shape their controllers reject otherwise).
CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": _SELECTOR,
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": _INTERVAL,
                                "scrapeTimeout": _INTERVAL,
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [
                                            {
                                                "required": ["alert", "labels", "annotations"],
                                                "not": {"required": ["record"]},
                                            },
                                            {
                                                "required": ["record"],
                                                "not": {"required": ["alert"]},
                                            },
                                        ],
                                        "properties": {
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _INTERVAL,
                                            "labels": {
                                                "type": "object",
                                                "required": ["severity"],
                                                "properties": {
                                                    "severity": {
                                                        "enum": ["critical", "warning", "info"]
                                                    }
                                                },
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "required": ["summary", "description"],
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string", "minLength": 1}},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                # KEDA reads trigger metadata as strings only.
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                },
                            },
                            "allOf": [
                                {
                                    "if": {"properties": {"type": {"const": "redis"}}},
                                    "then": {
                                        "properties": {
                                            "metadata": {
                                                "required": ["address", "listName", "listLength"],
                                                "properties": {
                                                    "listLength": {"pattern": "^[0-9]+$"},
                                                    "address": {"pattern": r"^[^:]+:[0-9]+$"},
                                                },
                                            }
                                        }
                                    },
                                },
                                {
                                    # KEDA's redis-sentinel (Redis Lists with Sentinel).
                                    "if": {"properties": {"type": {"const": "redis-sentinel"}}},
                                    "then": {
                                        "properties": {
                                            "metadata": {
                                                "required": [
                                                    "addresses",
                                                    "sentinelMaster",
                                                    "listName",
                                                    "listLength",
                                                ],
                                                "properties": {
                                                    "listLength": {"pattern": "^[0-9]+$"},
                                                    "addresses": {"pattern": _ADDRESSES},
                                                },
                                            }
                                        }
                                    },
                                },
                            ],
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["parameter", "name", "key"]},
                    }
                },
            },
        },
    },
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_builtin_resources_match_the_kubernetes_schema(docs: list[Doc], version: str) -> None:
    problems = []
    for doc in docs:
        if not is_builtin(doc):
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{describe(doc)}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            problems.append(f"{describe(doc)}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_custom_resources_have_the_fields_their_operators_require(docs: list[Doc]) -> None:
    problems = []
    for doc in docs:
        if is_builtin(doc):
            continue
        schema = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is None:
            problems.append(f"{describe(doc)}: no schema for {doc['apiVersion']} in this test")
            continue
        validator = jsonschema.Draft202012Validator(schema)
        for error in validator.iter_errors(doc):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{describe(doc)}: {path}: {error.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("docs", sources(), indirect=True)
def test_service_monitors_find_a_metrics_port(docs: list[Doc]) -> None:
    """Each ServiceMonitor selects at least one Service, and those Services have the port
    its endpoints name: a monitor that matches nothing scrapes nothing, silently."""
    services = kind_of(docs, "Service")
    for monitor in kind_of(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]
        chosen = [
            s
            for s in services
            if all(
                s["metadata"].get("labels", {}).get(k) == v
                for k, v in selector.get("matchLabels", {}).items()
            )
        ]
        assert chosen, f"{describe(monitor)} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            for service in chosen:
                names = {p.get("name") for p in service["spec"]["ports"]}
                assert endpoint["port"] in names, (
                    f"{describe(monitor)}: {describe(service)} has no port {endpoint['port']}"
                )
