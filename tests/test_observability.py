"""platform/observability/: the alert rules are a valid rule file whose expressions parse
as PromQL, and the rules and the dashboard read only metrics a live gateway declares."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1] / "platform" / "observability"
# Prometheus's own series, not the gateway's.
PROMETHEUS_METRICS = {"up"}

DURATION = {"type": "string", "pattern": r"^([0-9]+(y|w|d|h|m|s|ms))+$"}
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Prometheus's rule file format (prometheus.io/docs/prometheus/latest/configuration/
# alerting_rules and recording_rules), as a JSON schema; alerts must also say how severe
# they are and what happened.
RULE_FILE_SCHEMA = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": DURATION,
                    "limit": {"type": "integer", "minimum": 0},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr", "labels", "annotations"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": LABEL_NAME},
                                "expr": {"type": "string", "minLength": 1},
                                "for": DURATION,
                                "keep_firing_for": DURATION,
                                "labels": {
                                    "type": "object",
                                    "required": ["severity"],
                                    "properties": {
                                        "severity": {"enum": ["critical", "warning", "info"]}
                                    },
                                    "propertyNames": {"pattern": LABEL_NAME},
                                    "additionalProperties": {"type": "string"},
                                },
                                "annotations": {
                                    "type": "object",
                                    "required": ["summary", "description"],
                                    "propertyNames": {"pattern": LABEL_NAME},
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def rules() -> list[dict]:
    document = yaml.safe_load((ROOT / "alerts.yaml").read_text())
    jsonschema.validate(document, RULE_FILE_SCHEMA)
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The series an expression (or a Grafana label_values() query) reads."""
    found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr)
    if found:
        return {found.group(1)}
    # Grafana's variables, as PromQL a query would have after their expansion.
    expr = expr.replace("$__rate_interval", "5m").replace('"$model"', '".*"')
    names: set[str] = set()

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def declared(url: str) -> set[str]:
    """Every series name the gateway's /metrics declares, whether or not a labelled
    metric has a sample yet (# TYPE lines): counters as _total, histograms' three."""
    text = httpx.get(url + "/metrics", timeout=10).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def test_the_alert_rules_are_a_valid_rule_file():
    alerts = {rule["alert"] for rule in rules()}
    # What issue 15 asks for: error rate, p95 TTFT, Triton down, quota store down.
    assert {
        "LLMGatewayHighErrorRate",
        "LLMGatewaySlowFirstToken",
        "LLMGatewayTritonDown",
        "LLMGatewayQuotaStoreDown",
    } <= alerts
    for rule in rules():
        promql_parser.parse(rule["expr"])  # raises on bad PromQL


def test_the_schema_refuses_a_broken_rule():
    """The check can fail: a rule without labels, a bad duration."""
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "up", "for": "5 min"}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, RULE_FILE_SCHEMA)
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(x[5m])")


def test_rules_and_dashboard_read_only_metrics_the_gateway_serves(live_gateway):
    served = declared(live_gateway.url) | PROMETHEUS_METRICS
    # The new metrics are among them, labelled or not.
    assert {
        "llmgateway_http_requests_in_flight",
        "llmgateway_time_per_output_token_seconds_bucket",
        "llmgateway_queue_wait_seconds_bucket",
        "llmgateway_admission_wait_seconds_bucket",
        "llmgateway_build_info",
        "llmgateway_store_up",
        "llmgateway_quota_store_errors_total",
    } <= served
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    read = set().union(*(metric_names(expr) for expr in exprs))
    assert read - served == set()
    assert "llmgateway_time_to_first_token_seconds_bucket" in read
    assert metric_names("sum(rate(llmgateway_nope_total[5m]))") - served  # it can fail


def test_the_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads((ROOT / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
