"""`ssb submit` and `ssb jobs`: what is uploaded, how the token is found, how arguments
reach the command (fast), and real jobs on a two-node loopback cluster (slow): curation
with one engine replica per node, then training with one Train worker per node."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from cluster import submit
from cluster.cli import build_parser
from ssb.store import LogitStore
from tests.cluster.conftest import PER_REPLICA_CPUS
from tests.cluster.loopback import VENV_BIN
from tests.conftest import REPO, tiny_curation_overrides

# ---------------------------------------------------------------- fast: no cluster


def test_entrypoint_runs_the_uploaded_cli_with_a_relative_config():
    entry = submit.entrypoint("run", str(REPO / "configs" / "default.yaml"), ["--rounds", "2", "engine.replicas=2"],
                              working_dir=REPO, progress=False)
    assert entry == "python -m cluster.cli run --config configs/default.yaml --quiet --rounds 2 engine.replicas=2"
    args = build_parser().parse_args(shlex.split(entry)[3:])  # what the job will run parses
    assert args.rounds == 2 and args.overrides == ["engine.replicas=2"] and args.quiet


def test_a_config_outside_the_uploaded_directory_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="outside the uploaded directory"):
        submit.entrypoint("train", str(tmp_path / "c.yaml"), [], working_dir=REPO, progress=False)


def test_submit_options_mix_with_overrides_and_flags_pass_after_double_dash():
    args = build_parser().parse_args(["submit", "run", "configs/default.yaml", "a.b=1", "--address", "h:8265",
                                      "c.d=2", "--env", "X=1", "--", "--rounds", "2"])
    assert submit.parse_passthrough(args) == ["a.b=1", "c.d=2", "--rounds", "2"]
    assert args.address == "h:8265" and args.env == ["X=1"]
    assert submit.resolve_address(args.address) == "http://h:8265"


def test_runtime_env_uploads_the_project_without_venv_runs_git_or_caches(monkeypatch):
    monkeypatch.setenv("SSB_TEST_PLAIN", "plain")
    renv = submit.runtime_env(REPO, env=submit.parse_env(["VLLM_CPU_KVCACHE_SPACE=4", "SSB_TEST_PLAIN"]),
                              pip=["x==1"])
    assert renv["working_dir"] == str(REPO) and renv["pip"] == ["x==1"]
    for pattern in (".venv", "runs", ".git", "__pycache__", ".pytest_cache"):
        assert pattern in renv["excludes"]
    assert renv["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "4" and renv["env_vars"]["SSB_TEST_PLAIN"] == "plain"
    assert renv["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    with pytest.raises(ValueError, match="not set"):
        submit.parse_env(["SSB_SURELY_UNSET_VARIABLE"])


@pytest.mark.parametrize("item", ["HF_TOKEN", "WANDB_API_KEY=abc", "AWS_SECRET_ACCESS_KEY=x", "DB_PASSWORD=pw",
                                  "MY_VAR=hf_abcdefghijklmnop", "OTHER=sk-abcdefghijklmnop"])
def test_secret_looking_env_is_refused_unless_allowed(item, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue1234")
    with pytest.raises(ValueError, match="looks like a secret") as err:
        submit.parse_env([item])
    assert "hf_secretvalue1234" not in str(err.value)
    key = item.partition("=")[0]
    assert key in submit.parse_env([item], allow_secrets=True)
    assert f"--env {key} is stored in clear" in capsys.readouterr().err


def test_names_that_only_point_at_a_secret_pass():
    env = submit.parse_env(["HF_TOKEN_PATH=/shared/hf_token", "TOKENIZERS_PARALLELISM=true", "HF_HOME=/x"])
    assert env["HF_TOKEN_PATH"] == "/shared/hf_token"


def test_secret_files_venv_and_runs_are_left_out_of_the_uploaded_package(tmp_path):
    from zipfile import ZipFile

    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "project"
    kept = ["cluster/cli.py", "ssb/tokenizer_notes.md", "configs/default.yaml", "keys.py", "environment.md"]
    left_out = [".env", ".env.local", "prod.env", "certs/server.pem", "tls.key", ".ssh/id_rsa", "id_ed25519.pub",
                ".netrc", ".pypirc", "secrets/hf_token", "cloud/credentials.json", ".aws/credentials",
                ".venv/bin/python", "runs/default/report.md", "sub/runs/x.json", "auth_token"]
    for name in kept + left_out:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    renv = submit.runtime_env(project)
    create_package(str(project), tmp_path / "pkg.zip", include_gitignore=True, excludes=renv["excludes"])
    with ZipFile(tmp_path / "pkg.zip") as z:
        uploaded = {n for n in z.namelist() if not n.endswith("/")}
    assert uploaded == set(kept)


def test_the_token_is_found_where_ray_looks_for_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert submit.read_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.read_token() == "from-home"
    (tmp_path / "t").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert submit.read_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.read_token() == "from-env"
    (tmp_path / "f").write_text("from-flag")
    assert submit.read_token(str(tmp_path / "f")) == "from-flag"


def test_a_bad_override_fails_before_anything_is_uploaded(capsys):
    from cluster.cli import main

    code = main(["submit", "curate", "configs/default.yaml", "engine.replicaz=2", "--address", "http://127.0.0.1:9"])
    assert code == 2 and "replicaz" in capsys.readouterr().err


# ---------------------------------------------------------------- slow: a two-node cluster


JOB_TIMEOUT_S = 1200
CLUSTER_PROBLEMS = 16


def ssb(cluster, *args: str, timeout: float = JOB_TIMEOUT_S, token: bool = True) -> subprocess.CompletedProcess:
    """`ssb ...` as a user runs it: RAY_AUTH_TOKEN_PATH names the cluster's token, and no
    RAY_AUTH_MODE (the client needs none)."""
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    if not token:
        env.pop("RAY_AUTH_TOKEN_PATH")
        env["HOME"] = str(cluster.root)  # no ~/.ray/auth_token there
    return subprocess.run([str(VENV_BIN / "ssb"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _job_actors(cluster, job_id: str, class_part: str) -> list[dict]:
    job = cluster.get(f"/api/jobs/{job_id}")
    return [a for a in cluster.list_state("actors")
            if a["job_id"] == job["job_id"] and class_part in (a.get("class_name") or "")]


def _job_task_nodes(cluster, job_id: str, name_part: str) -> set[str]:
    """Nodes where the job's tasks and actor calls named like `name_part` ran."""
    job = cluster.get(f"/api/jobs/{job_id}")
    return {t["node_id"] for t in cluster.list_state("tasks")
            if t["job_id"] == job["job_id"] and name_part in (t.get("name") or "") and t.get("node_id")}


@pytest.fixture(scope="module")  # no wider than the loopback cluster it runs on
def cluster_curation(loopback_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cluster-run")
    # Sixteen problems (three kept in float32: the two Train workers below need two rows), six
    # batches, and no work sent before both replicas are up: otherwise the replica that loads
    # first can take every batch of so small a job and the other is never placed.
    overrides = tiny_curation_overrides(run_dir, n=CLUSTER_PROBLEMS) + [
        "engine.replicas=2", f"engine.cpus_per_replica={PER_REPLICA_CPUS}", "engine.batch_size=3",
        "engine.wait_for_replicas_s=900"]
    try:
        # ~3 min on a quiet 2-core box; far longer while other jobs load it.
        proc = ssb(loopback_cluster, "submit", "curate", "configs/default.yaml", "--address",
                   loopback_cluster.dashboard_url, "--submission-id", "ssb-test-curate", *overrides,
                   timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logs = ssb(loopback_cluster, "jobs", "logs", "ssb-test-curate", "--address", loopback_cluster.dashboard_url,
                   timeout=60)
        pytest.fail(f"the curation job did not end in {JOB_TIMEOUT_S} s; its log ends:\n{logs.stdout[-4000:]}")
    return run_dir, proc


@pytest.mark.slow
def test_submit_without_the_token_is_refused_with_a_hint(loopback_cluster):
    proc = ssb(loopback_cluster, "jobs", "list", "--address", loopback_cluster.dashboard_url, token=False, timeout=60)
    assert proc.returncode == 2
    assert "token" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr


@pytest.mark.slow
def test_submitted_curation_runs_an_engine_on_each_node_and_completes_its_shards(loopback_cluster, cluster_curation):
    run_dir, proc = cluster_curation
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "ssb-test-curate"
    assert "kept" in proc.stdout and "SUCCEEDED" in proc.stderr
    engines = _job_actors(loopback_cluster, "ssb-test-curate", "CurationWorker")
    assert len(engines) == 2, [a.get("class_name") for a in engines]
    assert {a["node_id"] for a in engines} == set(loopback_cluster.node_ids)
    # Each replica did curation work, not just started an engine.
    assert _job_task_nodes(loopback_cluster, "ssb-test-curate", "CurationWorker") == set(loopback_cluster.node_ids)
    store = LogitStore.open(str(run_dir / "curated"))
    store.verify()
    summary = store.summary()
    assert summary["rows"] >= 2, summary
    assert len(store.done_ids()) == CLUSTER_PROBLEMS  # every problem committed, kept or skipped


@pytest.mark.slow
def test_jobs_status_and_logs_of_a_finished_job(loopback_cluster, cluster_curation):
    address = ["--address", loopback_cluster.dashboard_url]
    status = ssb(loopback_cluster, "jobs", "status", "ssb-test-curate", *address, timeout=60)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = ssb(loopback_cluster, "jobs", "logs", "ssb-test-curate", *address, timeout=60)
    assert logs.returncode == 0 and "kept" in logs.stdout
    listed = ssb(loopback_cluster, "jobs", "list", *address, timeout=60)
    assert "ssb-test-curate" in listed.stdout and "cluster.cli curate" in listed.stdout


@pytest.mark.slow
def test_submitted_training_runs_one_worker_per_node_and_saves_the_adapter(loopback_cluster, cluster_curation):
    run_dir, curate = cluster_curation
    assert curate.returncode == 0, curate.stderr[-3000:]
    proc = ssb(loopback_cluster, "submit", "train", "configs/default.yaml", "--address", loopback_cluster.dashboard_url,
               "--submission-id", "ssb-test-train", f"run_dir={run_dir}", "train.num_workers=2",
               f"train.cpus_per_worker={PER_REPLICA_CPUS}", "train.batch_size=2", "train.max_steps=2",
               "train.lora.r=8", "train.lora.alpha=16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = _job_actors(loopback_cluster, "ssb-test-train", "RayTrainWorker")
    assert len(workers) == 2, [a.get("class_name") for a in _job_actors(loopback_cluster, "ssb-test-train", "")]
    assert {a["node_id"] for a in workers} == set(loopback_cluster.node_ids)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_jobs_stop_stops_a_running_job(loopback_cluster):
    address = ["--address", loopback_cluster.dashboard_url]
    started = ssb(loopback_cluster, "submit", "curate", "configs/default.yaml", *address, "--no-follow",
                  "--submission-id", "ssb-test-stop", f"run_dir={loopback_cluster.root / 'stopped'}", timeout=60)
    assert started.returncode == 0, started.stderr
    stopped = ssb(loopback_cluster, "jobs", "stop", "ssb-test-stop", *address, timeout=120)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr


LOCAL_RAY_PROBE = """
import ray
from pipelines.ray_setup import init_ray
from ssb.config import load_config
init_ray(load_config(None, ["ray.num_cpus=2"]).ray)
print("GCS", ray.get_runtime_context().gcs_address, int(ray.cluster_resources()["CPU"]))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_command_without_an_address_starts_its_own_ray_beside_a_ray_start_cluster(loopback_cluster):
    """`ray start` records its cluster in Ray's temp dir, where ray.init() with no address finds
    and joins it, and then refuses a local Ray's num_cpus. With no ray.address and no
    RAY_ADDRESS, a command starts a Ray of its own, as documented."""
    temp = loopback_cluster.root  # the cluster's --temp-dir is <root>/ray: RAY_TMPDIR makes it the default
    recorded = (temp / "ray" / "ray_current_cluster").read_text().strip()  # the node's IP, the cluster's port
    assert recorded.rsplit(":", 1)[1] == str(loopback_cluster.gcs_port)
    env = {**loopback_cluster.env, "RAY_TMPDIR": str(temp)}
    done = subprocess.run([sys.executable, "-c", LOCAL_RAY_PROBE], check=False, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, gcs, cpus = next(line for line in done.stdout.splitlines() if line.startswith("GCS ")).split()
    assert gcs.rsplit(":", 1)[1] != str(loopback_cluster.gcs_port) and int(cpus) == 2
