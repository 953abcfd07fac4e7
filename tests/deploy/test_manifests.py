"""deploy/: the image, compose file and Kubernetes manifests agree with the code.

Offline and fast. The Kubernetes objects are checked against the official JSON schemas bundled
in ``kubernetes-validate`` (strict: unknown fields fail), and everything that names the gateway's
own configuration is checked against the code itself: every environment variable is a real
setting whose value parses, the ConfigMap's profiles pass the profile schema (and
``gateway check-config``), the grace period covers the drain, the probes hit the real routes,
and the autoscalers scale on a metric the gateway really exports.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gateway.app import create_app
from gateway.cli import app as cli_app
from gateway.numbers import Profile, parse_profiles
from gateway.observability import Metrics
from gateway.serving import RunningServer, serve_app
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"

# Oldest and newest Kubernetes minor versions the manifests must be valid for.
K8S_VERSIONS = ("1.29", "1.37")
# Every variable Settings reads; cleared around each env-driven Settings() in these tests.
_SETTING_NAMES = frozenset(
    [f"{Settings.model_config.get('env_prefix', '')}{n}".upper() for n in Settings.model_fields]
    + ["OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"]
)
# Kinds whose schemas ship with kubernetes-validate; CRDs (KEDA) are checked by hand below.
CORE_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Ingress",
}


# --- helpers ------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _docs(path)
    ]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _k8s_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _deployment() -> dict[str, Any]:
    return _one("Deployment")


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _deployment()["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _container_env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container()["env"]}


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Settings exactly as the process would read them from ``env`` (and nothing else)."""
    for name in _SETTING_NAMES:
        if name in os.environ:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _metric_names() -> set[str]:
    """Metric family names the gateway exports (without the counters' ``_total``)."""
    return {family.name for family in Metrics().registry.collect()}


def _iter_env_names(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "env" and isinstance(v, list):
                yield from (e["name"] for e in v)
            else:
                yield from _iter_env_names(v)
    elif isinstance(doc, list):
        for item in doc:
            yield from _iter_env_names(item)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _dockerfile() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _final_stage() -> list[Instruction]:
    instructions = _dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _exec_form(args: str) -> list[str]:
    """Parse an exec-form (JSON array) argument list; fail on the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in _final_stage():
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                name, sep, value = token.partition("=")
                assert sep, f"use ENV NAME=value, not the legacy form: {ins.args}"
                env[name] = value
    return env


def _image_healthcheck() -> list[str]:
    checks = [i for i in _final_stage() if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    _options, sep, command = checks[0].args.partition(" CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    return _exec_form(command)


# --- every file parses -----------------------------------------------------------------------


def test_every_yaml_file_parses_into_mappings() -> None:
    files = _yaml_files()
    assert {p.name for p in files} >= {
        "docker-compose.yml",
        "kustomization.yaml",
        "deployment.yaml",
        "configmap.yaml",
        "secret.example.yaml",
        "service.yaml",
        "pdb.yaml",
        "keda-scaledobject.yaml",
        "hpa-prometheus-adapter.yaml",
    }
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"


def test_kustomization_lists_real_files_and_leaves_templates_out() -> None:
    kust = _docs(K8S / "kustomization.yaml")[0]
    resources = kust["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization lists a missing file {name}"
    # Placeholders must never overwrite real keys; two autoscalers must never fight.
    assert "secret.example.yaml" not in resources
    assert not {"keda-scaledobject.yaml", "hpa-prometheus-adapter.yaml"} <= set(resources)
    listed = set(resources) | {"kustomization.yaml"}
    unlisted = {p.name for p in K8S.glob("*.yaml")} - listed
    templates = {"secret.example.yaml", "hpa-prometheus-adapter.yaml", "ingress.example.yaml"}
    assert unlisted == templates
    images = {i["name"] for i in kust.get("images", [])}
    assert _container()["image"].split(":")[0] in images


# --- Kubernetes schemas ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_validate() -> Any:
    return pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate missing")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(k8s_validate: Any, version: str) -> None:
    objects = _k8s_objects()
    assert {doc["kind"] for _, doc in objects} >= CORE_KINDS
    checked = 0
    for path, doc in objects:
        if doc["kind"] not in CORE_KINDS:
            continue
        try:
            k8s_validate.validate(doc, version, strict=True)
        except k8s_validate.ValidationError as exc:
            pytest.fail(f"{path.name} ({doc['kind']}) is invalid for {version}: {exc.message}")
        checked += 1
    assert checked == sum(1 for _, d in objects if d["kind"] in CORE_KINDS)


def test_schema_validation_really_rejects_mistakes(k8s_validate: Any) -> None:
    # The check above is only worth something if the bundled schemas refuse a typo offline.
    bad = copy.deepcopy(_deployment())
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    with pytest.raises(k8s_validate.ValidationError, match="pathh"):
        k8s_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    bad = copy.deepcopy(_deployment())
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "330s"
    with pytest.raises(k8s_validate.ValidationError):
        k8s_validate.validate(bad, K8S_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_renders_valid_objects(k8s_validate: Any) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert "Deployment" in kinds and "ScaledObject" in kinds and "Secret" not in kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gateway", doc["kind"]
        if doc["kind"] in CORE_KINDS:
            k8s_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/gateway:0.1.0"


# --- the Deployment against the code ------------------------------------------------------------


def test_every_env_var_in_the_manifests_is_a_real_setting(setting_names: set[str]) -> None:
    known = setting_names
    assert {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "GATEWAY_DRAIN_TIMEOUT_S"} <= known
    in_k8s = {name for _, doc in _k8s_objects() for name in _iter_env_names(doc)}
    assert set(_container_env()) <= in_k8s
    unknown = in_k8s - known
    assert not unknown, f"Kubernetes manifests: not gateway settings: {sorted(unknown)}"
    for service, spec in _compose()["services"].items():
        unknown = set(spec.get("environment", {})) - known
        assert not unknown, f"compose service {service}: not gateway settings: {sorted(unknown)}"
    unknown = {n for n in _image_env() if n.startswith("GATEWAY_")} - known
    assert not unknown, f"Dockerfile ENV: not gateway settings: {sorted(unknown)}"


def _deployment_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    env: dict[str, str] = {}
    template = _docs(K8S / "secret.example.yaml")[0]["stringData"]
    for name, entry in _container_env().items():
        if "value" in entry:
            env[name] = str(entry["value"])
        else:  # the Secret template's placeholder, which has the value's shape
            env[name] = str(template[entry["valueFrom"]["secretKeyRef"]["key"]])
    return _settings_from_env(monkeypatch, env)


def test_deployment_settings_parse_and_mean_production(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _deployment_settings(monkeypatch)
    # A real upstream, signed webhooks, a public URL: never the dev shortcuts.
    assert not settings.uses_embedded_emulator
    assert settings.twilio_auth_token is not None
    assert settings.public_url is not None and settings.public_url.startswith("https://")
    assert not settings.allow_unsigned
    assert settings.host == "0.0.0.0"
    port = _container()["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == settings.port
    assert _pod_spec()["enableServiceLinks"] is False  # GATEWAY_PORT=tcp://... would collide
    # The root filesystem is read-only: records and recordings must land on a writable volume.
    writable = [Path(m["mountPath"]) for m in _container()["volumeMounts"] if not m.get("readOnly")]
    for path in (settings.records_path, settings.recordings_dir):
        assert any(path.is_relative_to(w) for w in writable), f"{path} is not on a volume"
    assert settings.records_url is not None and settings.records_url.startswith("postgresql")
    assert settings.call_control_enabled


def test_required_secrets_are_required_and_exist_in_the_template() -> None:
    env = _container_env()
    template = _docs(K8S / "secret.example.yaml")[0]
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "GATEWAY_ADMIN_TOKEN"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == template["metadata"]["name"]
        assert ref["key"] in template["stringData"]
    # Missing keys must stop the pod, not start it on the embedded emulator or loopback-only.
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"):
        assert not env[name]["valueFrom"]["secretKeyRef"].get("optional", False)


def test_grace_period_covers_prestop_and_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _deployment_settings(monkeypatch)
    prestop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    prestop_s = float(prestop[1])
    assert prestop_s >= 5, "too short for endpoint removal to reach the load balancer"
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= settings.drain_timeout_s + prestop_s + 10, (
        f"terminationGracePeriodSeconds={grace} must exceed preStop ({prestop_s:g} s) + "
        f"GATEWAY_DRAIN_TIMEOUT_S ({settings.drain_timeout_s:g} s) + a margin"
    )


def test_probes_hit_the_real_routes() -> None:
    c = _container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    routes = {getattr(r, "path", None) for r in _bare_app().routes}
    assert {"/healthz", "/readyz", "/metrics"} <= routes


def test_pod_runs_unprivileged_as_the_image_user() -> None:
    pod, c = _pod_spec(), _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    user = next(i for i in _final_stage() if i.keyword == "USER").args
    assert user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    # One process is about one core: request a whole one, and no CPU limit (throttling = gaps).
    assert str(c["resources"]["requests"]["cpu"]) == "1"
    assert "cpu" not in c["resources"].get("limits", {})


def test_profiles_configmap_is_mounted_where_the_setting_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _deployment_settings(monkeypatch)
    configmap = _one("ConfigMap")
    assert settings.profiles_file is not None
    volume = next(
        v
        for v in _pod_spec()["volumes"]
        if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount, "subPath mounts never see ConfigMap updates (no live reload)"
    assert settings.profiles_file.parent == Path(mount["mountPath"])
    assert settings.profiles_file.name in configmap["data"]


def test_profiles_configmap_validates(tmp_path: Path) -> None:
    text = _one("ConfigMap")["data"]["profiles.yaml"]
    profiles = parse_profiles(yaml.safe_load(text), source="configmap.yaml")
    assert profiles.numbers, "the example should show per-number overrides"
    assert profiles.default != Profile(), "the example should show a non-default assistant"
    path = tmp_path / "profiles.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli_app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    for number in profiles.numbers:
        assert number in result.output


def test_service_and_pdb_select_the_gateway_pods() -> None:
    labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    service, pdb = _one("Service"), _one("PodDisruptionBudget")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == _container()["ports"][0]["name"]


def test_autoscalers_use_a_metric_the_gateway_exports() -> None:
    exported = _metric_names()
    assert "gateway_active_calls" in exported
    deployment = _deployment()["metadata"]["name"]

    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    prom = next(t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus")
    queried = set(re.findall(r"\bgateway_[a-z_]+", prom["metadata"]["query"]))
    assert queried and queried <= exported, queried
    assert prom["metricType"] == "AverageValue"

    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m]
    assert pods_metrics and set(pods_metrics) <= exported

    # Scale at fewer calls per pod than a pod admits, or new calls meet full pods.
    max_calls = int(_container_env()["GATEWAY_MAX_CALLS"]["value"])
    assert float(prom["metadata"]["threshold"]) < max_calls
    hpa_target = next(m for m in hpa["spec"]["metrics"] if "pods" in m)["pods"]["target"]
    assert float(hpa_target["averageValue"]) < max_calls


# --- the Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_exec_form() -> None:
    instructions = _dockerfile()
    assert max(i.stage for i in instructions) >= 1, "expected a builder and a runtime stage"
    final = _final_stage()
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the runtime stage must drop root"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0")
    entrypoint = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert len(entrypoint) == 1 and _exec_form(entrypoint[0].args) == ["gateway"]
    cmd = [i for i in final if i.keyword == "CMD"]
    assert len(cmd) == 1 and _exec_form(cmd[0].args)[0] == "serve"
    healthcheck = _image_healthcheck()
    assert "curl" not in healthcheck and "/healthz" in " ".join(healthcheck)
    exposed = {i.args for i in final if i.keyword == "EXPOSE"}
    assert _image_env()["GATEWAY_PORT"] in exposed
    assert _image_env()["GATEWAY_HOST"] == "0.0.0.0"
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "--only-binary=:all:" in runs, "a dependency without a wheel must fail the build"
    assert "[dev]" not in runs and "pesq" not in runs, "dev extras (pesq needs a compiler)"


def test_dockerfile_dockerignore_keeps_secrets_out_of_the_context() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "deny by default, so .env and .venv never reach the daemon"
    assert set(patterns) >= {"!pyproject.toml", "!gateway/"}
    copied = {
        i.args.split()[0] for i in _dockerfile() if i.keyword == "COPY" and "--from" not in i.args
    }
    allowed = {p.lstrip("!").rstrip("/") for p in patterns if p.startswith("!")}
    for arg in copied:
        assert arg in allowed, f"COPY {arg} is excluded by the .dockerignore"


# --- compose ------------------------------------------------------------------------------------


def test_compose_wires_the_gateway_to_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    emulator, gateway = services["emulator"], services["gateway"]
    command = emulator["command"]
    assert command[0] == "emulator"
    port = command[command.index("--port") + 1]
    env = {k: str(v) for k, v in gateway["environment"].items()}
    settings = _settings_from_env(monkeypatch, env)
    assert settings.realtime_base_url == f"http://emulator:{port}/v1"
    assert not settings.uses_embedded_emulator
    assert settings.allow_unsigned, "the load tester connects from outside loopback, unsigned"
    assert env["OPENAI_API_KEY"] == str(emulator["environment"]["OPENAI_API_KEY"])
    assert gateway["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert set(emulator["networks"]) == set(gateway["networks"]), "WebRTC needs one network"
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > settings.drain_timeout_s


# --- the health checks, run for real ------------------------------------------------------------


def _no_upstream(_profile: Profile) -> Any:
    raise AssertionError("no call is placed in these tests")


def _bare_app() -> Any:
    return create_app(Settings(_env_file=None), upstream=_no_upstream)  # type: ignore[call-arg]


@pytest.fixture
async def gateway_server() -> AsyncIterator[RunningServer]:
    async with serve_app(_bare_app()) as srv:
        yield srv


async def _run(argv: list[str], env: dict[str, str] | None = None) -> int:
    argv = [sys.executable if a == "python" else a for a in argv]
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, **(env or {})}, stdout=asyncio.subprocess.DEVNULL
    )
    async with asyncio.timeout(30):
        return await proc.wait()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.timeout(60)
async def test_image_healthcheck_passes_on_a_live_gateway_and_fails_without(
    gateway_server: RunningServer,
) -> None:
    check = _image_healthcheck()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{gateway_server.url}/healthz")).status_code == 200
    assert await _run(check, {"GATEWAY_PORT": str(gateway_server.port)}) == 0
    assert await _run(check, {"GATEWAY_PORT": str(_closed_port())}) != 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("service", "port"), [("gateway", 8080), ("emulator", 8765)])
async def test_compose_healthchecks_pass_on_a_live_server_and_fail_without(
    gateway_server: RunningServer, service: str, port: int
) -> None:
    test = _compose()["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD" and "curl" not in test
    argv = [a.replace(f":{port}/", ":{PORT}/") for a in test[1:]]
    assert any("{PORT}" in a for a in argv), f"the {service} check does not probe port {port}"
    live = [a.replace("{PORT}", str(gateway_server.port)) for a in argv]
    dead = [a.replace("{PORT}", str(_closed_port())) for a in argv]
    assert await _run(live) == 0
    assert await _run(dead) != 0


# --- the image, where a Docker engine exists ----------------------------------------------------


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine (only a client, or none)")
def test_image_builds_and_runs_check_config() -> None:
    tag = "gateway:test-deploy"
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run(
        ["docker", "run", "--rm", "--read-only", tag, "check-config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "embedded emulator" in run.stdout
    whoami = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert whoami.stdout.strip() == "10001"
