"""Nothing untrusted is unpickled or evaluated.

Problem files, model outputs and checkpoints are untrusted input. Answers go through
math-verify, which parses LaTeX into sympy; sympy's own `sympify`/`parse_expr` would `eval`
a string, so Python payloads are planted in boxed answers, in gold answers read from a
problem file, and in a pickled checkpoint, and the side-effect file they would create is
looked for. A positive control proves the payloads do run when something does evaluate
them, so an absent file means "not executed", not "payload broken". A static audit of the
source tree keeps new `eval`/`pickle.load`/`yaml.load`/... calls from slipping in.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ssb.config import DataConfig
from ssb.data import extract_reference_answer, last_boxed, load_problems
from ssb.records import Verdict
from ssb.verify import Verifier, extract_answer

REPO = Path(__file__).resolve().parents[2]
AUDITED = ("ssb", "pipelines", "services", "cluster")


def payloads(marker: Path) -> list[str]:
    """Python that creates `marker` if anything evaluates it."""
    m = str(marker)
    return [
        f"__import__('os').system('touch {m}')",
        f'__import__("os").system("touch {m}")',
        f"eval(\"__import__('os').system('touch {m}')\")",
        f"exec(\"import os; os.system('touch {m}')\")",
        f"(lambda: __import__('os').system('touch {m}'))()",
        f"1+__import__('os').system('touch {m}')",
        f"2*(3)+__import__('os').system('touch {m}')",
        f"open('{m}', 'w').close()",
        f"getattr(__builtins__, 'exec')(\"open('{m}', 'w').close()\")",
        f"Symbol('x').__class__.__init__.__globals__['__builtins__']['__import__']('os').system('touch {m}')",
        f"\\operatorname{{__import__}}('os').system('touch {m}')",
        f"\\frac{{__import__('os').system('touch {m}')}}{{2}}",
    ]


def test_positive_control_sympify_would_run_the_payload(tmp_path: Path) -> None:
    """The payload works: plain sympy.sympify on it creates the file (in a throw-away interpreter)."""
    marker = tmp_path / "control"
    code = "import sys, sympy\ntry:\n    sympy.sympify(sys.argv[1])\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code, payloads(marker)[0]], timeout=300, check=True)
    assert marker.exists(), "sympify should have executed the payload: the control is broken"


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout_s=10.0, fallbacks=("answer_is", "gsm8k", "last_number")) as v:
        v.start()
        yield v


def _wrappings(payload: str) -> list[str]:
    return [
        f"\\boxed{{{payload}}}",
        f"so $\\boxed{{{payload}}}$.",
        f"The answer is {payload}",
        f"The final answer is {payload}. I hope it is correct.",
        f"#### {payload}",
        f"Answer: $x = {payload}$",
        payload,
    ]


def test_model_outputs_with_python_payloads_execute_nothing(tmp_path: Path, verifier: Verifier) -> None:
    marker = tmp_path / "pwned-by-rollout"
    texts = [w for p in payloads(marker) for w in _wrappings(p)]
    results = verifier.check_many([(text, "3") for text in texts])
    results += verifier.check_many([("\\boxed{3}", text) for text in texts])  # as the gold, too
    for text in texts:
        extract_answer(text, ("answer_is", "gsm8k", "last_number"))
        last_boxed(text)
        assert verifier.equivalent(text, text) in (True, False)
    assert all(v in set(Verdict) and v != Verdict.CORRECT for _, v in results[: len(texts)])
    assert not marker.exists(), "a model output was executed as Python"


def test_problem_files_with_python_payloads_execute_nothing(tmp_path: Path, verifier: Verifier) -> None:
    marker = tmp_path / "pwned-by-problem-file"
    rows = []
    for i, p in enumerate(payloads(marker)):
        rows += [{"id": f"a{i}", "question": p, "answer": p},
                 {"id": f"s{i}", "question": "Solve.", "solution": f"so \\boxed{{{p}}}"},
                 {"id": f"g{i}", "question": "How many?", "answer": f"work\n#### {p}"}]
    path = tmp_path / "evil.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems, report = load_problems(DataConfig(source=str(path)))
    assert report.loaded == len(rows)  # strings are data: they load, as text
    results = verifier.check_many([(f"\\boxed{{{p.answer}}}", p.answer) for p in problems])
    results += verifier.check_many([("\\boxed{0}", p.answer) for p in problems])
    for p in problems:
        extract_reference_answer(p.answer, "answer")
    assert all(v in set(Verdict) for _, v in results)
    assert not marker.exists(), "a problem file's answer was executed as Python"


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_holding_a_pickle_payload_is_refused_unexecuted(tmp_path: Path) -> None:
    import torch

    from ssb.train import STATE_FILE, load_training_state

    marker = tmp_path / "pwned-by-checkpoint"
    with open(tmp_path / STATE_FILE, "wb") as f:  # what torch.save would write around it
        torch.save({"optimizer": {}, "scheduler": {}, "state": _Evil(marker)}, f)
    assert pickle.loads(pickle.dumps(_Evil(tmp_path / "control-pickle"))) == 0  # the payload runs...
    assert (tmp_path / "control-pickle").exists()  # ...when something unpickles it
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(tmp_path, optimizer=None, scheduler=None)
    assert not marker.exists(), "a checkpoint was unpickled with code execution"


def test_a_real_optimizer_checkpoint_still_loads_with_weights_only(tmp_path: Path) -> None:
    import torch

    from ssb.config import TrainConfig
    from ssb.train import STATE_FILE, TrainState, load_training_state, make_optimizer

    module = torch.nn.Linear(3, 2)
    opt, sched = make_optimizer(module, TrainConfig(), total_steps=10)
    module(torch.ones(1, 3)).sum().backward()
    opt.step(), sched.step()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "state": {"step": 1, "epoch": 0, "batch": 1}}, tmp_path / STATE_FILE)
    opt2, sched2 = make_optimizer(module, TrainConfig(), total_steps=10)
    assert load_training_state(tmp_path, opt2, sched2) == TrainState(step=1, epoch=0, batch=1)
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


# --- a static audit of the code base ----------------------------------------------------

_BANNED_NAMES = {"eval", "exec", "compile", "__import__", "sympify", "parse_expr", "parse_latex"}
_BANNED_ATTRS = {
    ("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("marshal", "load"), ("marshal", "loads"), ("dill", "load"), ("dill", "loads"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
    ("sympy", "sympify"), ("sympy", "parse_expr"), ("shelve", "open"), ("jsonpickle", "decode"),
}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def audit(source: str, filename: str) -> list[str]:
    """Calls that would evaluate or unpickle data: `file:line what`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func, where = node.func, f"{filename}:{node.lineno}"
        kwargs = {k.arg: k.value for k in node.keywords}
        if isinstance(func, ast.Name) and func.id in _BANNED_NAMES:
            found.append(f"{where} {func.id}()")
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in _BANNED_ATTRS or func.attr in {"sympify", "parse_expr", "unsafe_load"}:
                found.append(f"{where} {owner}.{func.attr}()")
            if func.attr == "load" and owner == "torch" and not _is_true(kwargs.get("weights_only")):
                found.append(f"{where} torch.load() without weights_only=True")
            if func.attr == "load" and owner in {"np", "numpy"} and _is_true(kwargs.get("allow_pickle")):
                found.append(f"{where} numpy.load(allow_pickle=True)")
        if _is_true(kwargs.get("trust_remote_code")):
            found.append(f"{where} trust_remote_code=True")
        if _is_true(kwargs.get("shell")):
            found.append(f"{where} shell=True")
    return found


def test_the_audit_catches_what_it_looks_for() -> None:
    bad = ("import pickle, yaml, torch\neval(x)\npickle.loads(b)\nyaml.load(s)\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nAutoModel.from_pretrained(n, trust_remote_code=True)\n"
           "sympy.sympify(s)\nsubprocess.run(c, shell=True)\n")
    assert len(audit(bad, "bad.py")) == 8
    good = "yaml.safe_load(s)\ntorch.load(p, weights_only=True)\nmodel.eval()\njson.loads(s)\n"
    assert audit(good, "good.py") == []


def test_no_code_in_the_tree_evaluates_or_unpickles_data() -> None:
    found = []
    for package in AUDITED:
        for path in sorted((REPO / package).rglob("*.py")):
            found += audit(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == []


def test_config_yaml_tags_cannot_build_python_objects(tmp_path: Path) -> None:
    from ssb.config import load_config

    marker = tmp_path / "pwned-by-yaml"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"run_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception):
        load_config(str(cfg), [])
    with pytest.raises(Exception):
        load_config(None, [f"run_dir=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_the_whole_payload_list_is_inert_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """The in-process checks above share caches with other tests; repeat the core in a clean
    interpreter, with the default (module-level) verifier."""
    marker = tmp_path / "pwned-fresh"
    code = (
        "import json, sys\n"
        "from ssb.verify import is_equivalent, extract_answer\n"
        "ps = json.loads(sys.argv[1])\n"
        "if __name__ == '__main__':\n"
        "    for p in ps:\n"
        "        is_equivalent(p, '3', timeout_s=10); is_equivalent('3', p, timeout_s=10)\n"
        "        extract_answer('\\\\boxed{' + p + '}')\n"
    )
    subprocess.run([sys.executable, "-c", code, json.dumps(payloads(marker))], cwd=REPO, check=True,
                   timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert not marker.exists()
