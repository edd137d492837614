"""`ssb submit`: run an ssb command as a Ray job on a cluster, through the Jobs API.

    ssb submit curate configs/default.yaml --address http://HEAD:8265 engine.replicas=4
    ssb submit run configs/qwen2.5-3b-gsm8k.yaml --address http://HEAD:8265 run_dir=/shared/runs/q -- --rounds 2
    ssb submit train configs/default.yaml --no-follow run_dir=/shared/runs/demo train.num_workers=8

The project directory (the one holding this package) is uploaded as the job's working
directory, minus the virtual environment, run outputs, git and caches; the job runs
`python -m cluster.cli <command> --config CONFIG ...` there, with the cluster's Python. The
cluster must have the project's dependencies installed (ray_cluster.yaml and the KubeRay
manifests do that; `--pip` adds packages for one job).

Everything after CONFIG is passed to the command: dotted overrides (checked here against
the config model before anything is uploaded) and, after `--`, the command's own flags.
The job's working directory is a temporary copy on the head node: give `run_dir` as shared
storage (an absolute path every node mounts), not a relative path. An s3:// / gs:// run
directory holds only the logit store and Ray Train's checkpoints: `curate` and `train` take
one, `eval` and `run` are refused here (ssb/layout.py).

Secrets: `--env` values travel in the job's runtime_env, which Ray keeps in the job's record
for the life of the cluster and hands back in clear to `ray job list`, the SDK and the jobs
API (Ray 2.60 hides env_vars from browsers only); no Ray Jobs channel carries a value without
recording it. So `--env` refuses names and values that look like secrets (HF_TOKEN,
*_API_KEY, hf_..., sk-...) unless `--allow-secret-env` is given. Put secrets on the cluster
instead: the nodes' own environment (a KubeRay env from a Secret, `ray start` under the
variable), or a file on storage the nodes mount, named by a variable that is not secret
(`--env HF_TOKEN_PATH=/shared/secrets/hf_token`). Files that usually hold secrets (.env,
*.pem, keys, .netrc, ...) are never uploaded.

Token auth (Ray >= 2.52; `ray start` clusters enable it when a token exists, KubeRay with
`authOptions`): the token is read like Ray reads it — `--token-file`, else RAY_AUTH_TOKEN,
else the file at RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token — and sent as a bearer token
with every request (a cluster without auth ignores it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

COMMANDS = ("curate", "train", "eval", "run")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Not uploaded: environments, outputs, VCS, caches, local wheel folders (gitignore patterns).
EXCLUDES = [".venv", "venv", ".git", "runs", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info",
            ".mypy_cache", ".ruff_cache", ".cache", ".gl", ".whl", "/build", "/dist", "*.parquet", "*.safetensors"]
# Nor what usually holds secrets: the package sits in the cluster's store and on every node.
SECRET_EXCLUDES = [".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                   "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".ssh", ".gnupg", ".aws", ".kube", ".docker",
                   ".netrc", ".pypirc", ".npmrc", ".git-credentials", "secrets", ".secrets", "*.secret", "*.secrets",
                   "credentials.json", "service-account*.json", "auth_token", "*.token", "*.kdbx"]
# Set in every job; `--env` overrides.
DEFAULT_ENV = {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- connection and auth

def read_token(token_file: str | None = None) -> str | None:
    """The cluster token, found where Ray looks for it (same precedence); None if none."""
    if token_file:
        return Path(token_file).expanduser().read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:  # like Ray: a named file that cannot be read is an error, not a fall-back
        return Path(path).expanduser().read_text().strip()
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.is_file() else None


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if "://" not in address:  # `ray job` accepts host:port for the dashboard too
        address = "http://" + address
    return address


def make_client(address: str | None = None, token_file: str | None = None) -> Any:
    """A JobSubmissionClient that authenticates with the cluster token when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = read_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = resolve_address(address)
    try:
        return JobSubmissionClient(url, headers=headers)
    except (AuthenticationError, RuntimeError, ConnectionError) as exc:
        text = str(exc)
        if isinstance(exc, AuthenticationError) or "401" in text or "403" in text:
            hint = ("the cluster wants a token and none was found" if not token else
                    "the cluster rejected this token")
            raise RuntimeError(f"{url}: {hint}. Put the cluster's token (`ray get-auth-token` on the head) in "
                               "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH or --token-file, or "
                               "~/.ray/auth_token") from None
        raise RuntimeError(f"cannot reach the Ray job server at {url}: {text.splitlines()[0] if text else exc}") from None


# ---------------------------------------------------------------- what is submitted

def split_passthrough(args: list[str]) -> tuple[list[str], list[str]]:
    """Dotted overrides (`a.b=c`) and the rest (the command's own flags and their values)."""
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    return overrides, [a for a in args if a not in overrides]


def entrypoint(command: str, config: str, passthrough: list[str], *, working_dir: Path, progress: bool) -> str:
    if command not in COMMANDS:
        raise ValueError(f"ssb submit {command!r}: expected one of {', '.join(COMMANDS)}")
    path = Path(config).resolve()
    try:
        relative = path.relative_to(working_dir.resolve())
    except ValueError:
        raise ValueError(f"config {config} is outside the uploaded directory {working_dir}: only that directory "
                         "reaches the cluster (put the config in it, or pass --working-dir)") from None
    argv = ["python", "-m", "cluster.cli", command, "--config", relative.as_posix()]
    if not progress and "--quiet" not in passthrough and "-q" not in passthrough:
        argv.append("--quiet")
    return shlex.join(argv + passthrough)


_SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
_REFERENCE_WORDS = {"PATH", "FILE", "DIR"}  # HF_TOKEN_PATH names where a secret is, not the secret
# Hugging Face, OpenAI-style, GitHub, Slack and AWS access keys, whatever variable holds them.
_SECRET_VALUE = re.compile(r"(hf_|sk-|ghp_|gho_|github_pat_|xox[abp]-|AKIA)[A-Za-z0-9_\-]{8,}")


def looks_secret(name: str, value: str) -> bool:
    words = re.split(r"[^A-Z0-9]+", name.upper())
    by_name = bool(_SECRET_WORDS.intersection(words)) and words[-1] not in _REFERENCE_WORDS
    return by_name or bool(_SECRET_VALUE.match(value.strip()))


def parse_env(items: list[str], *, allow_secrets: bool = False) -> dict[str, str]:
    """`KEY=VALUE`, or `KEY` to pass this shell's value along. Secret-looking ones are refused
    (the module docstring says why and what to do instead) unless `allow_secrets`."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise ValueError(f"--env {key}: not set in this environment")
            value = os.environ[key]
        if looks_secret(key, value):
            if not allow_secrets:
                raise ValueError(f"--env {key} looks like a secret: Ray keeps env_vars in the job's record and shows "
                                 "them to `ray job list` and the SDK. Set it on the cluster's nodes, pass a file path "
                                 "(e.g. HF_TOKEN_PATH=/shared/hf_token), or add --allow-secret-env to send it anyway")
            print(f"ssb submit: warning: --env {key} is stored in clear in the job's runtime_env", file=sys.stderr)
        env[key] = value
    return env


def runtime_env(working_dir: Path, *, env: dict[str, str] | None = None, pip: list[str] | None = None,
                excludes: list[str] | None = None) -> dict[str, Any]:
    renv: dict[str, Any] = {"working_dir": str(working_dir),
                            "excludes": EXCLUDES + SECRET_EXCLUDES + list(excludes or []),
                            "env_vars": {**DEFAULT_ENV, **(env or {})}}
    if pip:
        renv["pip"] = list(pip)
    return renv


def check_config(config: str, overrides: list[str], command: str | None = None) -> Any:
    """Fail here, not minutes later on the cluster, on a bad config or override, or on a
    remote run directory `command` cannot use."""
    from ssb.config import load_config

    from cluster.args import check_run_dir

    cfg = load_config(config, overrides)
    if command is not None:
        check_run_dir(cfg, command)
    if not cfg.layout.remote and not Path(cfg.output_dir).is_absolute():
        print(f"ssb submit: warning: run_dir {cfg.output_dir!r} is relative: the job writes it inside its temporary "
              "working directory on the head node. Pass run_dir=<shared path> to keep the outputs.",
              file=sys.stderr)
    return cfg


# ---------------------------------------------------------------- following a job

def follow(client: Any, job_id: str, *, out: Any = None) -> str:
    """Streams the job's logs until it ends; returns its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream dropped: the job may still be running
        print(f"ssb: log stream interrupted ({exc}); waiting for the job to end", file=sys.stderr)
    return wait(client, job_id)


def wait(client: Any, job_id: str, poll_s: float = 2.0) -> str:
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def exit_code(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1


def report_end(client: Any, job_id: str, status: str) -> None:
    info = client.get_job_info(job_id)
    line = f"job {job_id}: {status}"
    if status != "SUCCEEDED" and info.message:
        line += f" ({info.message.strip().splitlines()[-1]})"
    print(line, file=sys.stderr)


# ---------------------------------------------------------------- the command

def cmd_submit(args: argparse.Namespace) -> int:
    working_dir = Path(args.working_dir or project_root()).resolve()
    overrides, flags = split_passthrough(parse_passthrough(args))
    if "=" in args.config:
        raise ValueError(f"ssb submit {args.job_command}: CONFIG comes before the overrides (got {args.config!r})")
    check_config(args.config, overrides, args.job_command)
    # Flags first: argparse takes no options after a run of overrides has started.
    entry = entrypoint(args.job_command, args.config, flags + overrides, working_dir=working_dir,
                       progress=args.progress)
    renv = runtime_env(working_dir, env=parse_env(args.env, allow_secrets=args.allow_secret_env), pip=args.pip,
                       excludes=args.exclude)
    client = make_client(args.address, args.token_file)
    kwargs: dict[str, Any] = {}
    if args.entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = args.entrypoint_num_cpus
    if args.entrypoint_num_gpus is not None:
        kwargs["entrypoint_num_gpus"] = args.entrypoint_num_gpus
    job_id = client.submit_job(entrypoint=entry, runtime_env=renv, submission_id=args.submission_id,
                               metadata={"ssb_command": args.job_command}, **kwargs)
    print(job_id, flush=True)
    print(f"ssb: submitted `{entry}` to {resolve_address(args.address)}", file=sys.stderr)
    if args.no_follow:
        print(f"ssb: follow with `ssb jobs logs {job_id} --follow`, stop with `ssb jobs stop {job_id}`",
              file=sys.stderr)
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nssb: stopped following; the job keeps running. `ssb jobs stop {job_id}` stops it.",
              file=sys.stderr)
        return 130
    report_end(client, job_id, status)
    return exit_code(status)


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help=f"the head's dashboard URL (default $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
                                     f"{DEFAULT_ADDRESS})")
    p.add_argument("--token-file", dest="token_file",
                   help="file holding the cluster's auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                        "~/.ray/auth_token)")


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    add_connection_args(p)
    p.add_argument("--no-follow", dest="no_follow", action="store_true", help="print the job id and return")
    p.add_argument("--progress", action="store_true", help="keep the command's progress bars in the logs")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="environment variable for the job (KEY alone: this shell's value); repeatable. Values "
                        "are recorded in the job: secret-looking ones are refused")
    p.add_argument("--allow-secret-env", dest="allow_secret_env", action="store_true",
                   help="send secret-looking --env values anyway (readable by anyone with access to the cluster's "
                        "jobs API)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="extra pip requirement installed for this job; repeatable")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="more gitignore-style patterns not to upload; repeatable")
    p.add_argument("--working-dir", dest="working_dir", help="directory to upload (default: the ssb project)")
    p.add_argument("--submission-id", dest="submission_id", help="job id to use (default: generated)")
    p.add_argument("--entrypoint-num-cpus", dest="entrypoint_num_cpus", type=float,
                   help="CPUs reserved for the job's driver (it then runs on a node that has them)")
    p.add_argument("--entrypoint-num-gpus", dest="entrypoint_num_gpus", type=float)


def parse_passthrough(args: argparse.Namespace) -> list[str]:
    """argparse cannot mix options into a run of positionals (`CONFIG a=b --address X c=d`):
    everything after CONFIG arrives here, and submit's own options are picked out of the
    part before `--`; the rest goes to the command."""
    rest = list(args.passthrough)
    tail: list[str] = []
    if "--" in rest:
        at = rest.index("--")
        rest, tail = rest[:at], rest[at + 1:]
    options = argparse.ArgumentParser(prog="ssb submit", add_help=False)
    _add_submit_options(options)
    # Defaults are not re-applied: values given before CONFIG stay.
    options.set_defaults(**{a.dest: getattr(args, a.dest) for a in options._actions})
    _, unknown = options.parse_known_args(rest, namespace=args)
    return unknown + tail


def add_parser(sub: Any) -> None:
    help_text = "run curate/train/eval/run as a Ray job on a cluster (uploads this project)"
    p = sub.add_parser("submit", help=help_text, description=help_text)
    p.add_argument("job_command", metavar="{" + ",".join(COMMANDS) + "}", choices=COMMANDS)
    p.add_argument("config", metavar="CONFIG", help="YAML run config inside the uploaded directory")
    p.add_argument("passthrough", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="dotted overrides, then `--` and the command's own flags (e.g. -- --rounds 2)")
    _add_submit_options(p)
    p.set_defaults(fn=cmd_submit)
