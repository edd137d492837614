"""The settings reference, docs/settings.md, generated from the config schema.

    python -m cluster.settings_reference            # rewrites docs/settings.md
    python -m cluster.settings_reference --check    # exit 1 when docs/settings.md is out of date

Every field of the run config (ssb/config.py `RunConfig` and its sections) is listed by its
dotted name (`curate.rollout.n`) with its type, its default as a run starts from it, its bounds
(the ge/le/gt/lt of the field) and its meaning (the field's `description`). The service's
settings (services/settings.py `ServiceSettings`, the `serve.*` overrides of `ssb serve`) follow
as sections of their own; their meaning is the field's description where it has one, else a
note kept here (SERVE_NOTES), else the comment beside the field in services/settings.py.

Plain Python and pydantic: no Ray, no engine.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "settings.md"
COMMAND = "python -m cluster.settings_reference"

# The meaning of service settings that have neither a description nor a comment in
# services/settings.py (or only a terse one), by dotted name under `serve.`. A test fails when
# one names a field that no longer exists, or when a field has no meaning from any source.
SERVE_NOTES: dict[str, str] = {
    "llm.app_name": "Ray Serve application name of the model endpoint.",
    "llm.route_prefix": "Where the OpenAI endpoint is mounted: /openai/v1/completions, /openai/v1/chat/completions.",
    "llm.ingress_replicas": "Replicas of the OpenAI router in front of the model replicas.",
    "llm.min_replicas": ("Fewest model replicas the autoscaler keeps (also the engine-backed curation "
                         "engine's fewest)."),
    "llm.max_replicas": ("Most model replicas the autoscaler starts (the curation engine's most is the "
                         "larger of this and `engine.replicas`)."),
    "llm.target_ongoing_requests": "Requests per model replica the autoscaler aims at.",
    "llm.max_ongoing_requests": "Requests one model replica takes at once; more wait in Serve's queue.",
    "llm.max_adapters_per_replica": "LoRA adapters one model replica keeps loaded (least recently used goes first).",
    "api.app_name": "Ray Serve application name of the curation API.",
    "api.route_prefix": "Where the curation API is mounted.",
    "api.host": "HTTP host Serve listens on (`ssb serve --host`).",
    "api.port": "HTTP port Serve listens on (`ssb serve --port`).",
    "api.token_digests": ("HMAC digests of the accepted bearer tokens (token_digest(token, token_salt)); "
                          "`ssb serve` fills them from $SSB_API_TOKEN, the tokens themselves are never kept."),
    "api.token_salt": "Hex salt of the token digests; `ssb serve` draws one per deployment.",
    "api.max_request_bytes": "Largest request body, in bytes (413 past it).",
    "api.max_problems_per_job": "Most problems one job may ask for (422 past it).",
    "api.max_question_chars": "Longest question in a request, in characters (422 past it).",
    "api.max_sync_problems": "Most problems a synchronous `POST /v1/curate` may ask for.",
    "api.sync_timeout_s": "How long `POST /v1/curate` waits for its job before answering 202 (poll the job then).",
    "api.max_concurrent_jobs_per_token": "Queued or running jobs one token may have at once (429 past it).",
    "api.max_page_size": "Most examples one page of `GET /v1/curation-jobs/ID/examples` returns.",
    "api.api_replicas": "Replicas of the curation API.",
    "jobs.redis_url": "The Redis holding job records (`ssb serve --redis-url`; else a local redis-server).",
    "jobs.prefix": "Prefix of every Redis key the job store writes.",
    "jobs.idempotency_ttl_s": "How long an Idempotency-Key is remembered, in seconds.",
    "jobs.max_stored_jobs_per_token": ("Job records (not yet expired, in any state) one token may keep; 429 past it. "
                                       "Bounds Redis."),
    "jobs.batch_timeout_s": "Longest one batch may take through the engine; past it the job fails (resumable).",
    "jobs.jobs_root": ("Where job run directories go: <jobs_root>/<job id> (ssb.layout.job_dir); `ssb serve` "
                       "makes it <run-dir>/jobs unless set. Local or shared filesystem only."),
    "jobs.prune_every_s": "How often the runner removes old job run directories, in seconds.",
    "jobs.runner_replicas": "Replicas of the job runner.",
    "jobs.poll_s": "How often an idle runner looks for a queued job, in seconds.",
}


# What a service section is, where its class has no docstring.
SERVE_SUMMARIES = {
    "api": "The curation API: where it listens, its tokens and its limits.",
    "jobs": "The job store (Redis) and the job runner: retention, leases, the backend.",
}


@dataclass(frozen=True)
class Row:
    name: str  # dotted, without a section prefix such as "serve."
    type: str
    default: str
    bounds: str
    meaning: str


@dataclass(frozen=True)
class Section:
    title: str  # dotted prefix as written in an override: "curate", "serve.api"
    summary: str
    rows: tuple[Row, ...]


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms: `int or None`, `list of str`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or None" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (list, tuple, set):
        item = type_name(args[0]) if args else "any"
        return "list of " + ("mappings" if item == "section" else item)
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def bounds_text(info: Any) -> str:
    """The field's numeric bounds from its metadata (annotated_types Ge/Gt/Le/Lt)."""
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def default_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, ensure_ascii=False)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        args = typing.get_args(annotation)
        return _model_of(args[0]) if args else None
    return None


def field_comments(cls: type[BaseModel]) -> dict[str, str]:
    """The comments beside each field in `cls`'s source: the block just above it and the one
    at the end of its line(s), joined."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    source = inspect.cleandoc("\n" + source) if source.startswith(" ") else source
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                  if n in comments and not lines[n - 1].lstrip().startswith("#")]
        text = " ".join(above + beside).strip()
        if text:
            text = text[0].upper() + text[1:]
            found[node.target.id] = text if text.endswith(".") else text + "."
    return found


def model_rows(cls: type[BaseModel], prefix: str, values: Any, notes: dict[str, str] | None = None,
               use_comments: bool = False) -> list[Row]:
    """One row per leaf field of `cls` under `prefix`; sections are expanded, a list of
    sections gets a row for the list and rows `name[].field` for its entries' own fields."""
    rows: list[Row] = []
    comments = field_comments(cls) if use_comments else {}
    for name, info in cls.model_fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        value = values.get(name) if isinstance(values, dict) else info.get_default(call_default_factory=True)
        sub = _model_of(info.annotation)
        if sub is not None:
            sub_values = value.model_dump() if isinstance(value, BaseModel) else value
            rows += model_rows(sub, dotted, sub_values, notes, use_comments)
            continue
        meaning = info.description or (notes or {}).get(dotted) or comments.get(name, "")
        rows.append(Row(dotted, type_name(info.annotation), default_text(value), bounds_text(info), meaning))
        item = _list_item_model(info.annotation)
        if item is not None:
            own = {f: i for f, i in item.model_fields.items() if f not in cls.model_fields}
            shared = [f for f in item.model_fields if f in cls.model_fields]
            for f, i in own.items():
                rows.append(Row(f"{dotted}[].{f}", type_name(i.annotation),
                                default_text(i.get_default(call_default_factory=True)), bounds_text(i),
                                i.description or ""))
            if shared:
                rows.append(Row(f"{dotted}[].…", "", "", "",
                                f"Each entry also takes these fields of `{prefix}`: " + ", ".join(shared) + "."))
    return rows


def run_sections() -> list[Section]:
    from ssb.config import RunConfig

    defaults = RunConfig().model_dump()
    top = [name for name, info in RunConfig.model_fields.items() if _model_of(info.annotation) is None]
    sections = [Section("(top level)", "The run itself.",
                        tuple(r for r in model_rows(RunConfig, "", defaults) if r.name.split(".")[0] in top))]
    for name, info in RunConfig.model_fields.items():
        sub = _model_of(info.annotation)
        if sub is not None:
            sections.append(Section(name, info.description or "", tuple(model_rows(sub, name, defaults[name]))))
    return sections


def serve_sections() -> list[Section]:
    from services.settings import ServiceSettings  # pydantic only: no Ray, no Serve

    defaults = ServiceSettings().model_dump()
    sections = []
    for name, info in ServiceSettings.model_fields.items():
        sub = _model_of(info.annotation)
        if name == "run" or sub is None:
            continue  # `run` is the run config above, set by the run config's own overrides
        rows = model_rows(sub, name, defaults[name], notes=SERVE_NOTES, use_comments=True)
        summary = info.description or SERVE_SUMMARIES.get(name) or inspect.cleandoc(sub.__dict__.get("__doc__") or "")
        sections.append(Section(f"serve.{name}",
                                summary, tuple(Row(f"serve.{r.name}", r.type, r.default, r.bounds, r.meaning)
                                               for r in rows)))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render() -> str:
    run, serve = run_sections(), serve_sections()
    out = [
        "# Settings reference",
        "",
        f"Generated from the config schema (ssb/config.py, services/settings.py) by `{COMMAND}`:",
        "do not edit by hand. A test (tests/cluster/test_settings_reference.py) fails when this page and the",
        "schema differ.",
        "",
        "Every `ssb` command takes `--config FILE` (YAML with these sections) and dotted overrides such as",
        "`curate.rollout.n=8`, whose values are read as YAML scalars (`eval.benchmarks='[svamp]'`). A",
        "default here is what a run starts from before its config file (`configs/default.yaml` sets",
        "several). `ssb serve` also takes `serve.*` overrides: the service's own settings, in the last",
        "sections. Bounds are checked when the config loads; a value out of bounds, an unknown key or",
        "a boolean where a number belongs is refused in one line before anything starts.",
        "",
        "Sections: " + " · ".join(f"[`{s.title}`](#{_anchor(s.title)})" for s in run + serve),
        "",
    ]
    for section in run + serve:
        out += [f"## {section.title}", ""]
        if section.summary:
            out += [section.summary, ""]
        out += ["| setting | type | default | bounds | meaning |", "|---|---|---|---|---|"]
        for r in section.rows:
            out.append(f"| `{r.name}` | {_cell(r.type)} | {'`' + _cell(r.default) + '`' if r.default else ''} "
                       f"| {r.bounds} | {_cell(r.meaning)} |")
        out.append("")
    return "\n".join(out)


def undocumented() -> list[str]:
    """Dotted names of settings with no meaning from any source (a run config field needs a
    description; a service field a description, a note or a comment)."""
    missing = []
    for section in run_sections() + serve_sections():
        missing += [r.name for r in section.rows if not r.meaning]
    return missing


def stale_notes() -> list[str]:
    names = {r.name.removeprefix("serve.") for s in serve_sections() for r in s.rows}
    return sorted(set(SERVE_NOTES) - names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="write docs/settings.md from the config schema")
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/settings.md is out of date")
    parser.add_argument("--output", default=str(DOC), help="where to write (default docs/settings.md)")
    args = parser.parse_args(argv)
    text = render()
    path = Path(args.output)
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{path} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
