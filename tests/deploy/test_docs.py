"""The operator docs stay true to the code: metric names, settings, error codes, links.

Covers docs/deployment.md, docs/metrics.md, docs/troubleshooting.md and
docs/twilio-quickstart.md. A renamed metric or setting, a new close code or a handled Realtime
error code that the docs do not mention fails here, as does a link to a missing page or heading.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics_core import Metric

from gateway.errors import CloseCode
from gateway.observability import Metrics
from gateway.realtime.events import FATAL_ERROR_CODES, RECOVERABLE_ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OPERATOR_DOCS = [
    "configuration.md",
    "operations.md",
    "deployment.md",
    "metrics.md",
    "troubleshooting.md",
    "twilio-quickstart.md",
    "load-testing.md",
    "reliability.md",
    "going-live.md",
    "outbound.md",
]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _families() -> list[Metric]:
    return list(Metrics().registry.collect())


def _exported_name(family: Metric) -> str:
    """The name a scrape shows for the family (counters gain ``_total``)."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def test_metrics_doc_lists_every_exported_metric_with_its_type() -> None:
    text = _text("metrics.md")
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|", text, re.M)
    }
    for family in _families():
        name = _exported_name(family)
        assert name in rows, f"docs/metrics.md does not list {name}"
        assert rows[name] == family.type, f"{name} is a {family.type}, the doc says {rows[name]}"


def test_metrics_doc_names_no_metric_that_does_not_exist() -> None:
    exported = {_exported_name(f) for f in _families()}
    allowed = set(exported)
    for name in exported:
        allowed.update(name + s for s in (*HISTOGRAM_SUFFIXES, "_created"))
        allowed.add(name.removesuffix("_total") + "_created")
    for doc in OPERATOR_DOCS:
        for token in set(re.findall(r"\b(?:gateway|process)_[a-z_]+[a-z]", _text(doc))):
            if token.startswith("gateway_call_token") or token == "gateway_number":
                continue  # TwiML <Parameter> names, not metrics
            if token == "gateway_protocol_error":
                continue  # a load-test failure reason, not a metric
            assert token in allowed, f"docs/{doc} names an unknown metric {token}"


def test_operator_docs_name_only_real_settings(setting_names: set[str]) -> None:
    known = setting_names
    for doc in OPERATOR_DOCS:
        for token in set(re.findall(r"\bGATEWAY_[A-Z0-9_]+", _text(doc))):
            if token.endswith("_"):
                continue  # a name pattern such as GATEWAY_PORT_* (Kubernetes service links)
            assert token in known, f"docs/{doc} names {token}, which is not a setting"


def test_configuration_reference_lists_every_setting() -> None:
    """The settings table names each setting by the variable an operator sets (the standard
    name for aliased ones)."""
    from pydantic import AliasChoices

    from gateway.settings import Settings

    text = _text("configuration.md")
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"GATEWAY_{name}"
        assert f"`{env.upper()}`" in text, f"docs/configuration.md does not list {env.upper()}"


def test_configuration_profile_example_shows_every_profile_field() -> None:
    from gateway.numbers import Profile, Tools

    text = _text("configuration.md")
    example = text.split("## Per-number profiles", 1)[1].split("```yaml", 1)[1].split("```")[0]
    shown = set(re.findall(r"^\s*([a-z_]+):", example, flags=re.MULTILINE))
    missing = (set(Profile.model_fields) - {"name"}) | set(Tools.model_fields)
    assert not missing - shown, f"profile fields missing from the example: {missing - shown}"


def test_troubleshooting_covers_every_close_code_and_handled_realtime_code() -> None:
    text = _text("troubleshooting.md")
    table = set(re.findall(r"^\| (\d{4}) \|", text, re.M))
    assert table == {str(int(c)) for c in CloseCode}
    for code in sorted(RECOVERABLE_ERROR_CODES | FATAL_ERROR_CODES):
        assert f"`{code}`" in text, f"troubleshooting.md does not say what {code} means"


@pytest.mark.parametrize("doc", OPERATOR_DOCS)
def test_every_twilio_error_code_links_to_its_source(doc: str) -> None:
    text = _text(doc)
    for code in set(re.findall(r"\b(11200|319\d\d)\b", text)):
        assert f"twilio.com/docs/api/errors/{code}" in _text("troubleshooting.md"), (
            f"Twilio error {code} (in docs/{doc}) has no source link in troubleshooting.md"
        )


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", OPERATOR_DOCS)
def test_relative_links_and_anchors_resolve(doc: str) -> None:
    source = DOCS / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(doc)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        assert path.exists(), f"docs/{doc} links to missing {target}"
        if anchor:
            assert anchor in _anchors(path), f"docs/{doc} links to missing heading {target}"


def test_deployment_doc_figures_match_the_manifests() -> None:
    text = _text("deployment.md")
    deployment = yaml.safe_load((ROOT / "deploy/k8s/deployment.yaml").read_text("utf-8"))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert f"**{pod['terminationGracePeriodSeconds']}**" in text
    assert f"`sleep {container['lifecycle']['preStop']['exec']['command'][1]}`" in text
    assert f"`GATEWAY_DRAIN_TIMEOUT_S` ({env['GATEWAY_DRAIN_TIMEOUT_S']})" in text
    scaled = yaml.safe_load((ROOT / "deploy/k8s/keda-scaledobject.yaml").read_text("utf-8"))
    prom = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    assert f'`threshold: "{prom["metadata"]["threshold"]}"`' in text
    assert f"(`GATEWAY_MAX_CALLS`={env['GATEWAY_MAX_CALLS']} per process)" in _text("metrics.md")


def test_load_testing_doc_names_only_real_options() -> None:
    import typer.main

    from gateway.cli import app

    command = typer.main.get_command(app)
    assert isinstance(command, typer.main.TyperGroup)
    loadtest = command.commands["loadtest"]
    known = {opt for param in loadtest.params for opt in (*param.opts, *param.secondary_opts)}
    benchmarks = ROOT / "tests" / "benchmarks"
    for script in ("capacity.py", "loadtester_self.py", "echo_quality.py", "setup_burst.py"):
        known |= set(
            re.findall(r'add_argument\(\s*"(--[a-z-]+)"', (benchmarks / script).read_text())
        )
    for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", _text("load-testing.md"))):
        assert option in known, f"docs/load-testing.md names {option}, which no command takes"
