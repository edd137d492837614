"""docs/settings.md is what `python -m cluster.settings_reference` writes from the config schema now,
and every setting has a meaning to write."""

from __future__ import annotations

import subprocess
import sys

from pydantic import BaseModel

from cluster import settings_reference
from ssb.config import RunConfig


def _models(cls: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if cls in seen:
        return seen
    seen.add(cls)
    for info in cls.model_fields.values():
        for sub in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                _models(sub, seen)
    return seen


def test_docs_settings_md_is_what_the_generator_writes() -> None:
    doc = settings_reference.DOC
    assert doc.is_file(), f"{doc} is missing: run `{settings_reference.COMMAND}`"
    assert doc.read_text() == settings_reference.render(), (
        f"docs/settings.md differs from the config schema: run `{settings_reference.COMMAND}` and commit it")


def test_every_run_config_field_has_a_description() -> None:
    missing = [f"{cls.__name__}.{name}" for cls in _models(RunConfig, set())
               for name, info in cls.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"fields of ssb/config.py without Field(description=...): {sorted(missing)}"


def test_every_listed_setting_has_a_meaning_and_no_note_is_stale() -> None:
    assert not settings_reference.undocumented(), settings_reference.undocumented()
    assert not settings_reference.stale_notes(), (
        f"SERVE_NOTES names settings services/settings.py no longer has: {settings_reference.stale_notes()}")


def test_the_reference_lists_every_leaf_setting_with_its_default_and_bounds() -> None:
    text = settings_reference.render()
    for name in ("curate.rollout.n", "train.lora.r", "data.synthetic.difficulty", "data.sources[].weight",
                 "eval.benchmarks", "serve.api.max_request_bytes", "serve.jobs.job_ttl_s", "serve.llm.enabled"):
        assert f"| `{name}` |" in text, name
    # the default a run starts from (the teacher's own 0.4), not the class default (0.8)
    assert "| `curate.teacher.temperature` | float | `0.4` | ≥ 0 |" in text
    assert "| `engine.worker_niceness` | int or None | `0` | ≥ 0, ≤ 19 |" in text
    assert "serve.run." not in text  # the service's run config is the run config above


def test_the_command_checks_and_writes(tmp_path) -> None:
    out = tmp_path / "settings.md"
    check_cmd = [sys.executable, "-m", "cluster.settings_reference", "--check", "--output", str(out)]
    stale = subprocess.run(check_cmd, check=False, capture_output=True, text=True)
    assert stale.returncode == 1 and settings_reference.COMMAND in stale.stderr
    subprocess.run([sys.executable, "-m", "cluster.settings_reference", "--output", str(out)], check=True,
                   capture_output=True)
    assert out.read_text() == settings_reference.render()
    assert subprocess.run(check_cmd, check=False, capture_output=True).returncode == 0
    # the generator needs neither Ray nor an engine
    probe = ("import sys, cluster.settings_reference as s; s.render(); "
             "print(sorted({'ray', 'vllm', 'torch'} & set(sys.modules)))")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "[]"
