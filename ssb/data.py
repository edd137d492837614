"""Problems in: a local file or directory, a hub dataset, a dataset known by name (gsm8k,
math500, aime24, svamp: ssb/datasets.py), or the embedded synthetic set.

Real datasets hold bad rows (broken JSON, missing answers, duplicate ids). Each one is
counted under a reason, a few locations are kept as examples, and the rest still load: a
curation run should report what it dropped, never die on line 4,711. A source with no valid
problem at all is an error, though: it is the wrong file or the wrong field names.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssb.config import DataConfig, SourceFields
from ssb.datasets import DATASETS, named_source
from ssb.records import Problem
from ssb.synthetic import synthetic_problems

__all__ = ["LoadReport", "check_source", "load_problems", "resolved_source", "source_file", "last_boxed",
           "extract_reference_answer", "synthetic_problems"]

QUESTION_FIELDS = ("question", "problem", "prompt", "query")
ANSWER_FIELDS = ("answer", "final_answer", "solution")
ID_FIELDS = ("id", "unique_id", "idx")
# A field holding a worked solution rather than a bare answer: the answer is its last box.
SOLUTION_FIELDS = ("solution",)
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
# No sane problem is 1 MB of JSON; a longer line is skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
# A gold answer is a number or a short expression (MATH500's longest: 53 chars); a longer one
# is a whole solution or garbage, and would cost the verifier its full time-out per rollout.
MAX_ANSWER_CHARS = 1_000
MAX_ID_CHARS = 256  # ids key the store's resume logic and appear in every shard row
MAX_EXAMPLES = 5
MAX_ANSWER_INT_BITS = 4_000 * 3  # ~3,600 decimal digits: safely under the 4,300-digit str() limit

# \framebox appears in AIME solutions; the look-ahead keeps \boxedfoo from counting.
_BOX_RE = re.compile(r"\\(?:boxed|fbox|framebox)(?![A-Za-z])")
_GROUPING = re.compile(r"\\.|[{}]", re.DOTALL)  # \{ and \} (any escaped char) are not grouping
_BARE_ANSWER = re.compile(r"[^\s$]+")  # `\boxed 5`
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")


@dataclass
class LoadReport:
    total: int = 0  # records read (blank JSONL lines are not records)
    loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "line 17: ..."
    source: str = ""
    stopped_at_limit: bool = False  # cfg.limit was reached: later records were not read

    def skip(self, reason: str, location: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(location)

    def summary(self) -> str:
        head = f"{self.source or 'data'}: loaded {self.loaded} of {self.total} records"
        if self.stopped_at_limit:
            head += " (stopped at the limit)"
        if not self.skipped:
            return head
        lines = [head + f", skipped {sum(self.skipped.values())}:"]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason}: {count}  e.g. " + "; ".join(self.examples.get(reason, [])))
        return "\n".join(lines)

    def first_reasons(self, n: int = 3) -> str:
        """The `n` commonest skip reasons on one line, each with its first example."""
        top = sorted(self.skipped.items(), key=lambda kv: -kv[1])[:n]
        return "; ".join(f"{reason} x{count} (e.g. {self.examples[reason][0]})" for reason, count in top)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox, \\framebox) in `text`, nested braces included.

    `\\boxed 5` (no braces) gives "5". None when there is no box or the last one is not
    closed (a truncated generation has no answer rather than a half-written one).
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        bare = _BARE_ANSWER.match(text, i)
        return bare.group(0) if bare else None
    depth, start = 0, i + 1
    for m in _GROUPING.finditer(text, i):  # a regex scan: hostile 100k-char answers stay fast
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return text[start : m.start()].strip()
    return None


def extract_reference_answer(value: Any, field_name: str) -> str | None:
    """The gold answer held in `value`; None when nothing can be extracted.

    GSM8K: the text after the last '####' (thousands commas dropped). A MATH-style solution
    (a solution field, or any text holding a box): the last box. Otherwise the text itself.
    """
    if isinstance(value, bool):  # bool is an int subclass; True is no answer
        return None
    if isinstance(value, int):
        # Past Python's int->str digit limit (4,300) str() raises; no benchmark answer is that long.
        return str(value) if value.bit_length() <= MAX_ANSWER_INT_BITS else None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if "####" in text:
        answer = _THOUSANDS_COMMA.sub("", text.rsplit("####", 1)[1].strip())
        return answer or None
    if field_name in SOLUTION_FIELDS or _BOX_RE.search(text):
        return last_boxed(text) or None
    return text or None


class NoValidProblems(ValueError):
    """A source with nothing to curate or evaluate; `report` says what each record was."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


def load_problems(cfg: SourceFields) -> tuple[list[Problem], LoadReport]:
    """Problems from `cfg.source` (or the mix of `cfg.sources`), and a report of what was
    skipped and why."""
    if isinstance(cfg, DataConfig) and cfg.sources:
        return _load_mix(cfg)
    if cfg.source == "synthetic":
        s = cfg.synthetic
        problems = synthetic_problems(s.n, seed=s.seed, difficulty=s.difficulty, split=cfg.split)
        if cfg.limit is not None:
            problems = problems[: cfg.limit]
        return problems, LoadReport(total=len(problems), loaded=len(problems), source="synthetic")
    if cfg.source in DATASETS:
        problems, report = load_problems(resolved_source(cfg))
        # ids and the report name the dataset, wherever its copy was read from
        return [replace(p, source=cfg.source) for p in problems], replace(report, source=cfg.source)
    path = _local_path(cfg.source)
    if path is not None:
        file = _resolve_split_file(path, cfg.split) if path.is_dir() else path
        name = _source_name(file)
        # gsm8k/train.jsonl -> ids "gsm8k-train-17": unique across the splits of one dataset.
        id_prefix = name if file.stem == name else f"{name}-{file.stem}"
        rows = _read_file(file)
    else:
        name = cfg.source.rstrip("/").rsplit("/", 1)[-1]
        id_prefix = f"{name}-{cfg.split}"
        rows = _read_hub(cfg)
    report = LoadReport(source=name)
    problems = _to_problems(rows, cfg, name, id_prefix, report)
    if not problems:
        where = file if path is not None else f"{cfg.source} (split {cfg.split!r})"
        why = f": {report.first_reasons()}" if report.skipped else ""
        raise NoValidProblems(f"data source {where}: no valid problem in {report.total} records{why}", report)
    return problems, report


def _load_mix(cfg: DataConfig) -> tuple[list[Problem], LoadReport]:
    """`cfg.limit` problems (else as many as the scarcest source allows) split over the sources
    in proportion to their weights, each source's share a seeded sample of it, shuffled
    together: the same config gives the same problems in the same order."""
    parts = []
    for entry in cfg.sources:
        sub = DataConfig(**entry.model_dump(exclude={"weight", "data_root"}), data_root=entry.data_root or cfg.data_root)
        parts.append((entry, *load_problems(sub)))
    weights = [e.weight for e, _, _ in parts]
    total_w = sum(weights)
    n = cfg.limit if cfg.limit is not None else min(int(len(p) * total_w / w) for w, (_, p, _) in zip(weights, parts))
    exact = [n * w / total_w for w in weights]
    quotas = [int(x) for x in exact]
    for i in sorted(range(len(parts)), key=lambda i: quotas[i] - exact[i])[: n - sum(quotas)]:
        quotas[i] += 1  # largest remainders first: the quotas add up to n
    rng = random.Random(f"ssb-mix:{cfg.mix_seed}")
    report = LoadReport(source="mix")
    chosen: list[Problem] = []
    seen: set[str] = set()
    shares = []
    for (entry, problems, sub_report), quota in zip(parts, quotas):
        report.total += sub_report.total
        for reason, count in sub_report.skipped.items():
            report.skipped[reason] = report.skipped.get(reason, 0) + count
            report.examples.setdefault(reason, []).extend(sub_report.examples.get(reason, [])[:MAX_EXAMPLES])
        taken = 0
        for p in rng.sample(problems, min(quota, len(problems))):
            if p.id in seen:  # two sources with one id: ids key the store's resume logic
                report.skip("duplicate_id", f"{sub_report.source}: id {p.id!r} seen in another source")
                continue
            seen.add(p.id)
            chosen.append(p)
            taken += 1
        shares.append(f"{sub_report.source} {taken}" + (f" of {quota} asked" if taken < quota else ""))
    rng.shuffle(chosen)
    report.source = "mix (" + ", ".join(shares) + ")"
    report.loaded = len(chosen)
    return chosen, report


# A row as read: its 0-based index in the file, where to point a human, and the parsed
# record, or a (reason, detail) pair when it could not even be parsed.
_Row = tuple[int, str, Any, tuple[str, str] | None]


def _to_problems(rows: Iterable[_Row], cfg: DataConfig, source: str, id_prefix: str,
                 report: LoadReport) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: set[str] = set()
    for index, where, row, error in rows:
        if cfg.limit is not None and len(problems) >= cfg.limit:
            report.stopped_at_limit = True
            break
        report.total += 1
        if error is not None:
            report.skip(error[0], f"{where}: {error[1]}")
            continue
        problem_or_reason = _to_problem(row, cfg, source, f"{id_prefix}-{index}")
        if isinstance(problem_or_reason, tuple):
            report.skip(problem_or_reason[0], f"{where}: {problem_or_reason[1]}")
        elif problem_or_reason.id in seen_ids:  # keep the first: ids key the resume logic
            report.skip("duplicate_id", f"{where}: id {problem_or_reason.id!r} seen before")
        else:
            seen_ids.add(problem_or_reason.id)
            problems.append(problem_or_reason)
    report.loaded = len(problems)
    return problems


def _pick(row: dict[str, Any], explicit: str | None, candidates: tuple[str, ...]) -> tuple[str, Any]:
    """(field name, value) from the configured field, else the first candidate with a value."""
    if explicit is not None:
        return explicit, row.get(explicit)
    for name in candidates:
        if row.get(name) not in (None, ""):
            return name, row[name]
    return candidates[0], None


def _to_problem(row: Any, cfg: DataConfig, source: str, fallback_id: str) -> Problem | tuple[str, str]:
    if not isinstance(row, dict):
        return "not_an_object", f"a JSON {type(row).__name__}, not an object"
    q_field, question = _pick(row, cfg.question_field, QUESTION_FIELDS)
    if question is None:
        return "missing_question", f"no {q_field!r} field" if cfg.question_field else "no question field"
    if not isinstance(question, str):
        return "wrong_type", f"question is a {type(question).__name__}"
    question = question.strip()
    if not question:
        return "missing_question", "empty question"
    if len(question) > cfg.max_question_chars:
        return "question_too_long", f"{len(question)} chars > {cfg.max_question_chars}"
    if not _encodable(question):
        return "invalid_text", "question holds a lone surrogate (not encodable as UTF-8)"
    a_field, answer = _pick(row, cfg.answer_field, ANSWER_FIELDS)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return "missing_answer", "missing answer"
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        return "wrong_type", f"answer is a {type(answer).__name__}"
    parsed = extract_reference_answer(answer, a_field)
    if parsed is None:
        return "unparseable_answer", f"no answer found in {a_field!r}"
    if len(parsed) > MAX_ANSWER_CHARS:
        return "answer_too_long", f"{len(parsed)} chars > {MAX_ANSWER_CHARS}"
    if not _encodable(parsed):
        return "invalid_text", "answer holds a lone surrogate (not encodable as UTF-8)"
    _, raw_id = _pick(row, cfg.id_field, ID_FIELDS)
    if raw_id is None or raw_id == "":
        raw_id = fallback_id  # stable: derived from the row's position, not from what was skipped
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return "wrong_type", f"id is a {type(raw_id).__name__}"
    elif isinstance(raw_id, str) and (len(raw_id) > MAX_ID_CHARS or not _encodable(raw_id)):
        return "invalid_id", f"id of {len(raw_id)} chars (at most {MAX_ID_CHARS}, valid UTF-8)"
    elif isinstance(raw_id, int) and raw_id.bit_length() > 64:
        return "invalid_id", "integer id wider than 64 bits"
    return Problem(id=str(raw_id), question=question, answer=parsed, source=source)


def _encodable(text: str) -> bool:
    """JSON escapes can smuggle lone surrogates ("\\ud800") into a str that Arrow, tokenizers
    and files cannot encode: such a record would fail far downstream, mid-run."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolved_source(cfg: SourceFields) -> SourceFields:
    """What `cfg` reads: a named dataset becomes its local copy or its hub source (with the hub
    copy's field names unless the config names its own); any other source stays as it is."""
    if cfg.source not in DATASETS:
        return cfg
    src = named_source(cfg.source, cfg.split, cfg.data_root)
    fields = {k: v for k, v in src.fields.items() if getattr(cfg, k) is None}
    return cfg.model_copy(update={"source": src.source, "split": src.split, "subset": src.subset, **fields})


def source_file(cfg: SourceFields) -> Path | None:
    """The file `cfg` reads (a named dataset's copy under a data root, a file, a directory's
    split file); None for the synthetic set, a mix or a hub dataset."""
    if cfg.source == "synthetic" or (isinstance(cfg, DataConfig) and cfg.sources):
        return None
    cfg = resolved_source(cfg)
    path = _local_path(cfg.source)
    if path is None:
        return None
    return _resolve_split_file(path, cfg.split) if path.is_dir() else path


def check_source(cfg: SourceFields) -> None:
    """Raises for a local source that is not there; cheap, so callers check before loading."""
    if isinstance(cfg, DataConfig) and cfg.sources:
        for entry in cfg.sources:
            check_source(DataConfig(**entry.model_dump(exclude={"weight"})))
        return
    if cfg.source == "synthetic":
        return
    if cfg.source in DATASETS:
        cfg = resolved_source(cfg)  # raises for a split the dataset does not have
    path = _local_path(cfg.source)
    if path is not None and path.is_dir():
        _resolve_split_file(path, cfg.split)


def _local_path(source: str) -> Path | None:
    """The path `source` names, or None for a hub name. A path-like source must exist."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith(("/", "./", "../", "~")) or source.endswith(FILE_SUFFIXES):
        raise FileNotFoundError(f"data source {source!r} does not exist")
    return None


def _resolve_split_file(directory: Path, split: str) -> Path:
    for suffix in FILE_SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in directory.iterdir())[:20]
    raise FileNotFoundError(f"{directory} holds no {split}.jsonl/.json/.parquet (found: {present})")


def _source_name(file: Path) -> str:
    # gsm8k/train.jsonl is "gsm8k"; a file named for itself (my_problems.jsonl) keeps its name.
    generic = {"train", "test", "validation", "val", "dev", "data"}
    return file.parent.name if file.stem in generic and file.parent.name else file.stem


def _read_file(file: Path) -> Iterator[_Row]:
    if file.suffix == ".jsonl":
        return _read_jsonl(file)
    if file.suffix == ".json":
        return _read_json(file)
    if file.suffix == ".parquet":
        return _read_parquet(file)
    raise ValueError(f"{file}: unsupported file type; use one of {FILE_SUFFIXES}")


def _read_jsonl(file: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[_Row]:
    # Binary, line by line, with a size cap per read: one bad line costs one record.
    index = 0
    with open(file, "rb") as f:
        for lineno in itertools.count(1):
            line = f.readline(max_line_bytes + 1)
            if not line:
                return
            where = f"line {lineno}"
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (chunk := f.readline(1 << 16)) and not chunk.endswith(b"\n"):
                    pass  # drain the rest of the line without keeping it
                yield index, where, None, ("line_too_long", f"longer than {max_line_bytes} bytes")
                index += 1
                continue
            if lineno == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark some editors write
            if not line.strip():
                continue
            yield index, where, *_parse_json_line(line)
            index += 1


def _parse_json_line(line: bytes) -> tuple[Any, tuple[str, str] | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, ("invalid_json", "not UTF-8 text")
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested input
        return None, ("invalid_json", str(exc)[:80])


def _read_json(file: Path) -> Iterator[_Row]:
    # Not a generator: a file that is not a JSON list fails here, before any row is read.
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not a JSON file ({exc}); for one record per line use .jsonl") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        if not text.lstrip().startswith("["):
            raise ValueError(f"{file}: not a JSON file ({exc}); for one record per line use .jsonl") from exc
        return _salvage_json_list(text)  # a truncated or partly broken list: keep what parses
    if not isinstance(data, list):
        raise ValueError(f"{file}: a .json data file must hold a list of objects, not a {type(data).__name__}")
    return ((index, f"item {index}", row, None) for index, row in enumerate(data))


def _salvage_json_list(text: str) -> Iterator[_Row]:
    """Items of a JSON list one at a time, up to the first that does not parse; the rest of
    the file counts as one invalid record (a truncated download, a stray byte)."""
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")
    pos, index = ws.match(text, text.index("[") + 1).end(), 0
    while pos < len(text) and text[pos] != "]":
        try:
            row, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            yield index, f"item {index}", None, ("invalid_json", f"unreadable from char {pos}: {str(exc)[:60]}")
            return
        yield index, f"item {index}", row, None
        index += 1
        pos = ws.match(text, pos).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            yield index, f"item {index}", None, ("invalid_json", f"truncated or broken at char {pos}")
            return


def _read_parquet(file: Path) -> Iterator[_Row]:
    # Not a generator: a file that is not Parquet at all fails here, naming the file.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file, page_checksum_verification=True)  # checked where the writer wrote them
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{file}: not a readable Parquet file ({exc})") from exc

    def rows() -> Iterator[_Row]:
        index = 0
        for group in range(pf.num_row_groups):  # a damaged row group costs its own rows only
            try:
                table = pf.read_row_group(group)
            except (pa.ArrowException, OSError) as exc:
                for _ in range(pf.metadata.row_group(group).num_rows):
                    yield index, f"row {index}", None, ("unreadable_parquet", f"row group {group}: {str(exc)[:60]}")
                    index += 1
                continue
            for batch in table.to_batches(max_chunksize=1024):
                for row in batch.to_pylist():
                    yield index, f"row {index}", row, None
                    index += 1

    return rows()


def _read_hub(cfg: DataConfig) -> Iterator[_Row]:
    try:
        import datasets  # imported here: heavy, and only this path needs it

        ds = datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split)
    except Exception as exc:  # offline, unknown name, missing split: all end the same way
        raise RuntimeError(
            f"could not load {cfg.source!r} (subset={cfg.subset!r}, split={cfg.split!r}) from the "
            f"Hugging Face hub: {type(exc).__name__}: {exc}. Offline? Set data.source to a local "
            f".jsonl/.json/.parquet file, a directory holding {cfg.split}.jsonl, or 'synthetic'."
        ) from exc
    return ((index, f"row {index}", row, None) for index, row in enumerate(ds))
