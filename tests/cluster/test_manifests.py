"""The cluster configs: ray_cluster.yaml through Ray's own launcher validation, the KubeRay
manifests against the fields their CRDs (ray.io/v1) require, and every ssb command in them
against the CLI that will run it."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from cluster.cli import build_parser
from ssb.config import load_config
from tests.conftest import REPO

KUBERAY = REPO / "cluster" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
IMAGE_ROOT = "/home/ray/ssb"  # where the image holds the project (docs/scaling.md)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: one resource per file, so `kubectl apply -f` does one thing"
    return docs[0]


# ---------------------------------------------------------------- ray_cluster.yaml


def _launcher_config() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_launcher_config()))  # what `ray up` runs before launching anything


def test_ray_cluster_yaml_has_a_cpu_head_and_an_autoscaling_gpu_group_installing_the_gpu_extra():
    cfg = _launcher_config()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) and t["min_workers"] < t["max_workers"]
               for t in workers)
    assert any(re.search(r"pip install .*\[gpu\]", c) for c in cfg["setup_commands"])
    assert all("RAY_AUTH_MODE=token" in " ".join(cfg[k]) for k in ("head_start_ray_commands",
                                                                     "worker_start_ray_commands"))


def test_rays_validation_rejects_a_misspelt_field():
    """The test above means something: the same validation fails on a typo."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(_launcher_config())
    bad["available_node_types"]["gpu_worker"]["min_wokers"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        validate_config(prepare_config(bad))


# ---------------------------------------------------------------- KubeRay


def _cluster_spec(doc: dict) -> dict | None:
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_container(c: dict, where: str) -> None:
    assert c.get("name") and c.get("image"), where
    res = c.get("resources", {})
    for key in ("cpu", "memory"):
        assert key in res.get("limits", {}) and key in res.get("requests", {}), f"{where}: resources.{key}"


def test_there_is_a_manifest_per_job_and_one_for_the_service():
    kinds = {p.name: _load(p)["kind"] for p in MANIFESTS}
    assert kinds.get("rayservice.yaml") == "RayService" and kinds.get("raycluster.yaml") == "RayCluster"
    commands = {shlex.split(_load(p)["spec"]["entrypoint"])[1] for p in MANIFESTS if kinds[p.name] == "RayJob"}
    assert commands == {"run", "curate", "train", "eval"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_has_the_fields_its_crd_requires(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in ("RayCluster", "RayJob", "RayService")
    name = doc["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 63, name
    spec = _cluster_spec(doc)
    if doc["kind"] == "RayJob" and spec is None:
        assert doc["spec"]["clusterSelector"], f"{path.name}: a RayJob needs rayClusterSpec or clusterSelector"
        return
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    for c in _containers(head):
        _check_container(c, f"{path.name} head")
    images = {c["image"] for c in _containers(head)}
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        for c in _containers(g):
            _check_container(c, f"{path.name} {g['groupName']}")
            images.add(c["image"])
    assert len(images) == 1, f"{path.name}: head and workers must run one image: {images}"
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in _containers(g)]
    assert any(gpus), f"{path.name}: no GPU worker group"
    assert all(c["resources"]["limits"].get("nvidia.com/gpu") is None for c in _containers(head)), "GPU on the head"


@pytest.mark.parametrize("path", [p for p in MANIFESTS if _load(p)["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_entrypoint_is_an_ssb_command_the_cli_accepts(path):
    spec = _load(path)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "ssb"
    args = build_parser().parse_args(argv[1:])
    assert args.command in ("curate", "train", "eval", "run")
    config = Path(args.config)
    assert config.is_absolute() and str(config).startswith(IMAGE_ROOT)
    local = REPO / config.relative_to(IMAGE_ROOT)
    cfg = load_config(local, args.overrides)  # the overrides are valid for the config model
    assert cfg.output_dir.startswith("/mnt/shared/"), "outputs must go to the shared claim"
    renv = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(renv, dict) and isinstance(renv.get("env_vars", {}), dict)
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")


def test_rayservice_serve_config_parses_and_names_importable_apps():
    doc = _load(KUBERAY / "rayservice.yaml")
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    apps = serve_cfg["applications"]
    assert {a["name"] for a in apps} == {"ssb", "ssb-llm"}
    assert len({a["route_prefix"] for a in apps}) == len(apps)
    for app in apps:
        module, _, attr = app["import_path"].partition(":")
        assert module and attr, app["import_path"]
        cfg = load_config(REPO / Path(app["args"]["config"]).relative_to(IMAGE_ROOT),
                          [o for o in app["args"]["overrides"] if not o.startswith("serve.")])
        assert cfg.engine.gpus_per_replica > 0
        builder = getattr(importlib.import_module(module), attr)
        assert callable(builder)


def test_rayservice_curation_app_builds_from_its_args(monkeypatch):
    """The builder RayService calls, with the manifest's own args: config + serve. overrides."""
    from ray.serve.deployment import Application

    from services.app import build_app

    app = next(a for a in yaml.safe_load(_load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])["applications"]
               if a["import_path"] == "services.app:build_app")
    args = {**app["args"], "config": str(REPO / Path(app["args"]["config"]).relative_to(IMAGE_ROOT))}
    monkeypatch.delenv("SSB_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SSB_API_TOKEN"):
        build_app(args)
    monkeypatch.setenv("SSB_API_TOKEN", "a-token-of-sixteen-chars")
    assert isinstance(build_app(args), Application)


def test_rayservice_probes_ask_the_curation_api_on_the_serve_port():
    """The GPU workers' proxies carry the traffic (the head is out of the Serve service), each
    ready only while /readyz says the service is, and alive while /livez answers; the head keeps
    KubeRay's own probes, which gate the Serve deployment itself (ours there would wait on it)."""
    from services.health import LIVE_PATH, READY_PATH, REDIS_TIMEOUT_S

    doc = _load(KUBERAY / "rayservice.yaml")
    port = yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["port"]
    assert doc["spec"]["excludeHeadPodFromServeSvc"] is True
    cluster = doc["spec"]["rayClusterConfig"]
    for c in _containers(cluster["headGroupSpec"]):
        assert "readinessProbe" not in c and "livenessProbe" not in c and "startupProbe" not in c
    workers = [c for g in cluster["workerGroupSpecs"] for c in _containers(g)]
    assert workers
    for c in workers:
        ready, live = c["readinessProbe"], c["livenessProbe"]
        assert ready["httpGet"] == {"path": READY_PATH, "port": port}
        assert live["httpGet"] == {"path": LIVE_PATH, "port": port}
        # A readiness check is a Redis PING and a heartbeat read, each with its own time-out.
        assert ready["timeoutSeconds"] > 2 * REDIS_TIMEOUT_S
        # Engines load for minutes before the API answers through a new pod's proxy.
        assert live["initialDelaySeconds"] >= 300 and live["failureThreshold"] * live["periodSeconds"] >= 60
        assert {"containerPort": port, "name": "serve"} in c["ports"]
