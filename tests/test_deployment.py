"""The deployment files describe the hub the code runs.

- docker-compose.yml passes Compose v2's own `config` check, and every service
  runs a real `hub` command with real settings and a health check;
- the Kubernetes manifests pass the Kubernetes schemas (strict), likewise;
- the image's file layout, rebuilt from the Dockerfile's COPY and ENV lines in a
  temporary folder and installed as the Dockerfile installs it, serves and
  ingests a CSV feed: a file the image lacks fails here, not at a user's site.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from live_server import free_port, wait_ready

from hub.cli import main as hub_cli
from hub.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SETTINGS = {f"HUB_{name.upper()}" for name in Settings.model_fields}
COMMANDS = set(hub_cli.commands)


def _hub_variables(env: dict[str, Any]) -> set[str]:
    return {k for k in env if k.startswith("HUB_")}


def _compose(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            str(BIN / "docker-compose"),
            "-f",
            str(ROOT / "docker-compose.yml"),
            *args,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("profile", [(), ("--profile", "scale")], ids=["default", "scale"])
def test_compose_config_is_valid_and_names_real_settings_and_commands(
    profile: tuple[str, ...],
) -> None:
    services = _compose(*profile)["services"]
    hub_services = {n: s for n, s in services.items() if s.get("image") == "fhir-hub:latest"}
    expected = {"migrate", "api", "worker", "beat", "mllp"} | ({"api-2"} if profile else set())
    assert set(hub_services) == expected
    assert {"postgres", "redis"} <= set(services)
    for name, service in hub_services.items():
        unknown = _hub_variables(service.get("environment", {})) - SETTINGS
        assert not unknown, f"{name} sets {unknown}, which are not settings"
        assert service["command"][0] in COMMANDS, f"{name} runs an unknown command"
        assert service["environment"]["HUB_BROKER_URL"].startswith("redis://redis:")
        if name != "migrate":
            assert "healthcheck" in service, f"{name} has no health check"
            assert service["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully"
            )
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
        assert services[name]["volumes"], f"{name} keeps its data in a volume"


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_kubernetes_manifests_pass_the_schemas() -> None:
    manifests = list(_manifests())
    assert len(manifests) >= 9
    for path, doc in manifests:
        # Raises ValidationError naming the element; strict: no unknown fields either.
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "fhir-hub", path


def test_kubernetes_runs_every_service_with_probes_and_real_settings() -> None:
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for _, doc in _manifests():
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind["Deployment"]
    assert set(deployments) == {f"fhir-hub-{s}" for s in ("api", "worker", "beat", "mllp")}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] in COMMANDS, name
        assert container["resources"]["requests"], name
        assert "livenessProbe" in container, name
        assert {"configMapRef", "secretRef"} <= {k for e in container["envFrom"] for k in e}
    api = deployments["fhir-hub-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(by_kind["Service"]) == {"fhir-hub-api", "fhir-hub-mllp"}
    assert deployments["fhir-hub-beat"]["spec"]["replicas"] == 1
    hpa = by_kind["HorizontalPodAutoscaler"]["fhir-hub-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fhir-hub-worker"
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "External"}
    secret = by_kind["Secret"]["fhir-hub"]["stringData"]
    config = by_kind["ConfigMap"]["fhir-hub"]["data"]
    assert {"HUB_DATABASE_URL", "HUB_BROKER_URL"} <= set(secret)
    assert not _hub_variables({**secret, **config}) - SETTINGS
    assert not {"HUB_DATABASE_URL", "HUB_BROKER_URL"} & set(config), "URLs belong in the Secret"


# --- the image's layout ----------------------------------------------------------------------


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (name, arguments) by stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, args = line.partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        stages[-1].append((name.upper(), args.strip()))
    return stages


def _env(args: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', args)) if "=" in args else {}


def _copy(args: str, workdir: Path, into: Path) -> None:
    """COPY from the build context into `into` (the image's root), as Docker copies: a
    folder's content into the target, a file to the target (into it when it ends in /)."""
    *sources, target = args.split()
    dest = into / (workdir / target).relative_to("/")
    for source in sources:
        src = ROOT / source
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
        else:
            to = dest / src.name if target.endswith("/") or len(sources) > 1 else dest
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, to)


@pytest.mark.e2e
def test_the_image_layout_serves_and_ingests_a_csv_feed(tmp_path: Path) -> None:
    build, runtime = _stages((ROOT / "Dockerfile").read_text())
    image = tmp_path / "image"
    venv = tmp_path / "venv"  # /opt/venv, copied from the build stage as it is
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    workdir, env = Path("/"), dict(os.environ)
    for name, args in build:
        if name == "WORKDIR":
            workdir = Path(args)
        elif name == "COPY":
            _copy(args, workdir, image)
        elif name == "RUN" and args.startswith("pip install"):
            # As the build stage runs it, in its WORKDIR, into the fresh venv.
            subprocess.run(
                [str(venv / "bin" / "pip"), *args.split()[1:], "--quiet"],
                cwd=image / workdir.relative_to("/"),
                check=True,
                timeout=600,
            )
    workdir = Path("/")
    for name, args in runtime:
        if name == "WORKDIR":
            workdir = Path(args)
        elif name == "ENV":
            env.update({k: v.strip('"') for k, v in _env(args).items() if k.startswith("HUB_")})
        elif name == "COPY" and "--from" not in args:
            _copy(args, workdir, image)
        elif name == "CMD":
            command = json.loads(args)
    app = image / workdir.relative_to("/")
    # The image's paths, under the temporary root.
    for key in ("HUB_MIGRATIONS_DIR", "HUB_MAPPINGS_DIR"):
        env[key] = str(image / Path(env[key]).relative_to("/"))
    port = free_port()
    # Port 2575 is not the test's to take.
    env.update(HUB_HOST="127.0.0.1", HUB_PORT=str(port), HUB_MLLP_ENABLED="false")
    env.pop("HUB_DATABASE_URL", None)
    env.pop("HUB_BROKER_URL", None)
    # The installed package alone: not this checkout on the path.
    env.pop("PYTHONPATH", None)
    assert not (app / "hub").exists(), "the image must run the installed package"
    server = subprocess.Popen(
        [str(venv / "bin" / "hub"), *command],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(
            base,
            lambda: server.stdout.read().decode() if server.poll() is not None else None,  # type: ignore[union-attr]
        )
        example = ROOT / "mappings/csv/examples/synthea-patients/basic.csv"
        answer = httpx.post(
            f"{base}/ingest/csv",
            params={"mapping": "synthea-patients", "wait": "true"},
            content=example.read_bytes(),
            headers={"Content-Type": "text/csv"},
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        summary = answer.json()
        assert summary["accepted"] >= 1 and not summary.get("errors"), summary
        found = httpx.get(f"{base}/fhir/Patient", params={"_summary": "count"}, timeout=10)
        assert found.json()["total"] == summary["accepted"]
    finally:
        server.terminate()
        server.wait(timeout=30)
