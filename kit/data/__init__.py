"""Support logs -> clean, private chat datasets, with every input record accounted for.

    python -m kit.data templates                      # the log formats kit reads
    python -m kit.data reference                      # the template keys (docs/templates.md)
    python -m kit.data preview recipes/quickstart.yaml -n 5
    python -m kit.data build recipes/quickstart.yaml

A log format is a YAML file in `data_templates/` that maps an export's fields to conversations, so a
new export format needs no Python. `build` writes `<run>/dataset/`: `train/validation/test.jsonl`
(one `{"id", "messages", "metadata", "source"}` per line), `rejects.jsonl` (each record left out, with
its file, record and line number or JSON path, the reason and a short code), `stats.json`
(`input = kept + rejected + duplicates`, in records), a dataset card `README.md` and, when
`data.folds` is set, `folds/fold_<k>.jsonl`. Private data is redacted before anything is written.
The folder is written whole or not at all.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import statistics
import sys
from pathlib import Path

import xxhash

from kit.data import tokens
from kit.data.augment import augment
from kit.data.clean import resolve_rules
from kit.data.conversation import Conversation, dumps_line
from kit.data.convert import Conversion, Settings, convert, no_gc, parse_time
from kit.data.parallel import PARALLEL_MIN_BYTES
from kit.data.read import source_files
from kit.data.splits import folds, split
from kit.data.tokens import TokenCounter
from kit.data.template import (
    TEMPLATES_DIR,
    Template,
    TemplateFields,
    find_template,
    load_template,
    template_listing,
    template_reference,
)
from kit.errors import KitError

__all__ = [
    "DATASET_SPLITS", "TEMPLATES_DIR", "Conversation", "Conversion", "Settings", "Template", "TemplateFields",
    "TokenCounter", "build", "convert", "dataset_dir", "dumps_line", "find_template", "fingerprint", "folds",
    "load_split", "load_template", "main", "parse_time", "read_jsonl", "recipe_sources", "settings_from", "split",
    "template_reference", "token_lengths", "write_jsonl",
]

DATASET_SPLITS = ("train", "validation", "test")
# Bumped whenever the conversion itself changes, so that existing datasets are rebuilt.
FORMAT_VERSION = 3
# Without token limits, token-length percentiles come from a seeded sample of this many conversations.
TOKEN_STATS_SAMPLE = 2000
WRITE_ROWS = 4096  # rows encoded (and hashed) at a time when writing a JSONL file


def recipe_sources(recipe) -> list[tuple]:
    """(path, template, template name, users file) for each file of each `data.sources` entry (a folder or
    a glob gives one per file, so that each file is accounted for by name)."""
    sources = []
    for s in recipe.data.sources:
        template = load_template(s.template)
        sources += [(path, template, Path(s.template).stem, s.users) for path in source_files(s.path, template.reader)]
    return sources


def settings_from(recipe) -> Settings:
    data = recipe.data
    return Settings(rules=data.rules, pii=data.pii, dedup=data.dedup, near_threshold=data.near_duplicate_threshold,
                    workers=data.workers)


def _recipe_settings(recipe) -> Settings:
    settings = settings_from(recipe)
    settings.serialize = True
    return settings


def fingerprint(recipe) -> str:
    """Changes whenever the dataset would: the data section, seed, model, every source, template and users file."""
    digest = hashlib.sha256(
        json.dumps([FORMAT_VERSION, recipe.data.model_dump(mode="json"), recipe.seed, recipe.model.name,
                    recipe.model.revision]).encode()
    )
    for source in recipe.data.sources:
        try:
            files = source_files(source.path, load_template(source.template).reader)
        except KitError:
            files = [source.path]  # missing: reported by the build itself
        digest.update(json.dumps(files).encode())
        for path in [Path(f) for f in files] + [find_template(source.template), Path(source.users) if source.users else None]:
            if path is None:
                continue
            if not path.is_file():
                digest.update(b"missing")
                continue
            # xxh3: a change detector (not a security check) at memory speed; the dataset written is
            # hashed with sha256 (stats.json).
            content = xxhash.xxh3_128()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    content.update(chunk)
            digest.update(content.digest())
    return digest.hexdigest()


def dataset_dir(recipe) -> Path:
    return recipe.run_dir / "dataset"


def write_jsonl(path: Path, rows: list[Conversation] | list[dict], digest=None) -> None:
    """One JSON line per conversation or dict (a reject), as a text file in UTF-8 with the platform's line
    ends; `digest` (a hashlib object) is updated with the bytes written, so that the file need not be read
    back to hash it."""
    end = os.linesep

    def emit(data: bytes) -> None:
        handle.write(data)
        if digest is not None:
            digest.update(data)

    # A thread writes and hashes each block (both release the GIL) while the next one is encoded.
    with path.open("wb") as handle, concurrent.futures.ThreadPoolExecutor(1) as writer:
        pending = None
        for start in range(0, len(rows), WRITE_ROWS):
            data = "\n".join([row.dumps() if row.__class__ is Conversation else dumps_line(row)
                              for row in rows[start : start + WRITE_ROWS]]) + "\n"
            data = (data if end == "\n" else data.replace("\n", end)).encode("utf-8")  # as text mode writes
            if pending is not None:
                pending.result()
            pending = writer.submit(emit, data)
        if pending is not None:
            pending.result()


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def token_lengths(conversations: list[dict], tokenizer) -> list[int]:
    """Tokens per conversation (rows with `messages`), counted with a transformers tokenizer (`tokens.count`)."""
    return tokens.count(tokenizer, [[m["content"] for m in c["messages"]] for c in conversations])


def _token_limits(recipe) -> dict[str, tuple[int, int]]:
    limits = {}
    for source in recipe.data.sources:
        template = load_template(source.template)
        rules = resolve_rules(template.rules, recipe.data.rules)
        for path in source_files(source.path, template.reader):
            limits[path] = (rules.min_tokens, rules.max_tokens)
    return limits


def _apply_token_limits(result: Conversion, lengths: list[int], limits: dict[str, tuple[int, int]]) -> list[int]:
    """Reject conversations outside their source's limits; the lengths of those kept."""
    kept, kept_lengths = [], []
    for conversation, length in zip(result.conversations, lengths):
        source = conversation.source
        low, high = limits.get(source["file"], (0, 0))
        problem = None
        if high and length > high:
            problem = ("too_long", f"conversation has {length} tokens, over rules.max_tokens={high}")
        elif low and length < low:
            problem = ("too_short", f"conversation has {length} tokens, under rules.min_tokens={low}")
        if problem is None:
            kept.append(conversation)
            kept_lengths.append(length)
            continue
        result.rejected_conversations += 1
        for number in source["records"]:
            where = {"file": source["file"], "record": number}
            if number == source["record"]:
                where.update({k: source[k] for k in ("line", "path") if k in source})
            result.rejects.append({**where, "reason": problem[1], "code": problem[0], "kind": "rejected"})
    result.conversations = kept
    return kept_lengths


def _percentiles(values: list[int]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 1)}


def _card(recipe, stats: dict, templates: dict[str, str]) -> str:
    lines = [
        f"# Dataset: {recipe.name}",
        "",
        "Chat conversations converted from customer-support exports by `python -m kit.data build`. "
        "Private data was replaced by typed placeholders (`{{EMAIL}}`, `{{PHONE}}`, ...) before anything was written.",
        "",
        "## Sources",
        "",
        "| file | template | records | conversations |",
        "| --- | --- | ---: | ---: |",
    ]
    for source in stats["sources"]:
        lines.append(f"| `{source['file']}` | `{source['template']}` ({templates.get(source['template'], '')}) | "
                     f"{source['records']} | {source['conversations']} |")
    for source in stats["sources"]:
        if source.get("joined_rows"):
            lines += ["", f"{source['joined_rows']} rows of `{source['file']}` had more fields than its header (unquoted "
                          "delimiters in the last column) and were kept with those fields joined (`csv_extra_fields: join`)."]
    conv = stats["conversations"]
    lines += [
        "",
        "## Accounting (records)",
        "",
        f"{stats['input']} input records = {stats['kept']} kept + {stats['rejected']} rejected + "
        f"{stats['duplicates']} duplicates. Every record left out is listed in `rejects.jsonl` with its file, "
        "record and line number or JSON path, and why.",
        "",
        f"Conversations: {conv['assembled']} assembled, {conv['kept']} kept, {conv['rejected']} rejected, "
        f"{conv['duplicates']} duplicates.",
        "",
    ]
    if stats["rejected_by_reason"]:
        lines += ["| reason code | records |", "| --- | ---: |"]
        lines += [f"| `{code}` | {count} |" for code, count in stats["rejected_by_reason"].items()]
        lines.append("")
    if stats.get("threads"):
        lines += [f"Reply threads: {json.dumps(stats['threads'])}.", ""]
    lines += ["## Private data redacted", ""]
    if stats["pii"]:
        lines += ["| kind | count |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in stats["pii"].items()]
    else:
        lines.append("None found." if recipe.data.pii.enabled else "Redaction was switched off (`data.pii.enabled: false`).")
    lines += ["", "## Splits", "", "| split | conversations |", "| --- | ---: |"]
    lines += [f"| {name} | {count} |" for name, count in stats["splits"].items()]
    if stats.get("augmented"):
        lines += ["", f"{stats['augmented']} augmented training copies (`metadata.augmented`), none in validation or test."]
    if stats.get("folds"):
        lines += ["", f"Cross-validation folds in `folds/`: {stats['folds']}."]
    tokens = stats.get("token_lengths")
    if tokens:
        where = f", from a seeded sample of {tokens['sample']}" if "sample" in tokens else ""
        figures = ", ".join(f"{k} {v}" for k, v in tokens.items() if k != "sample")
        lines += ["", f"Tokens per conversation ({recipe.model.name}{where}): {figures}."]
    present = [name for name in DATASET_SPLITS if stats["splits"][name]]
    files = ", ".join(f'"{name}": "{name}.jsonl"' for name in present)
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        f'dataset = load_dataset("json", data_files={{{files}}})',
        "```",
        "",
        "Each line: `id`, `messages` (`role`, `content`), `metadata` (the template's fields), `source` "
        "(`file`, `record`, `line` or `path`, `records`, `template`).",
        "",
    ]
    return "\n".join(lines)


def check_settings(recipe) -> None:
    """Recipe values the schema cannot judge: regexes that do not compile, phone regions phonenumbers lacks."""
    import re

    import phonenumbers

    data = recipe.data
    for key, patterns in (("data.pii.patterns", data.pii.patterns), ("data.rules.remove_patterns", data.rules.remove_patterns),
                          ("data.rules.auto_reply_patterns", data.rules.auto_reply_patterns)):
        for i, pattern in enumerate(patterns or ()):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise KitError(f"{key}[{i}]: {pattern!r} is not a valid regular expression ({exc}); fix it "
                               "(write a literal ( [ * + ? with a backslash before it)") from None
    for region in data.pii.phone_regions:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise KitError(f"data.pii.phone_regions: {region!r} is not a region code; use upper-case ISO 3166 codes "
                           "such as US, GB, DE")


def build(recipe, force: bool = False) -> Path:
    """Write the dataset folder for a recipe (kept as is when it is complete and up to date)."""
    check_settings(recipe)
    with no_gc():
        return _build(recipe, force)


def _build(recipe, force: bool) -> Path:
    target = dataset_dir(recipe)
    stamp = fingerprint(recipe)
    stats_path = target / "stats.json"
    if not force and stats_path.is_file():
        try:
            if json.loads(stats_path.read_text()).get("fingerprint") == stamp:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    sources = recipe_sources(recipe)
    limits = _token_limits(recipe)
    limited = any(low or high for low, high in limits.values())
    large = sum(Path(item[0]).stat().st_size for item in sources if Path(item[0]).is_file()) >= PARALLEL_MIN_BYTES
    counter = TokenCounter(recipe.model, yield_cpu=large)
    settings = _recipe_settings(recipe)
    if large:  # a big export takes a while: say what is happening, a line per phase
        settings.progress = _progress
        # Its arrays and batches are big blocks, which glibc's malloc would map fresh and unmap again every
        # time: keeping freed memory for reuse makes the whole build about a tenth faster (see
        # `speed.keep_freed_memory`; kit.sft does the same on a CPU). It stays set for this process.
        from kit import speed

        speed.keep_freed_memory()
    try:
        result = convert(sources, recipe.data.system_prompt, settings)
        sampled = None
        if limited:  # every conversation is measured against its limits
            lengths, tokenizer_problem = counter.lengths(_texts(result.conversations))
            if lengths is None:
                raise KitError(f"data.rules.max_tokens/min_tokens need the model's tokenizer: {tokenizer_problem}")
            lengths = _apply_token_limits(result, lengths, limits)
        else:  # statistics only: a seeded sample is enough, and much faster on big exports
            sample = result.conversations
            if len(sample) > TOKEN_STATS_SAMPLE:
                sample = random.Random(recipe.seed).sample(sample, TOKEN_STATS_SAMPLE)
                sampled = len(sample)
            # Counted (and the tokenizer maybe still loaded) while the dataset files are written.
            asked = counter.ask(_texts(sample))
        return _finish(recipe, target, stamp, result, counter, lengths if limited else None,
                       None if limited else asked, sampled, settings.progress)
    finally:
        counter.close(wait=False)


def _texts(conversations: list[Conversation]) -> list[list[str]]:
    return [[m["content"] for m in c.chat()] for c in conversations]


def _progress(line: str) -> None:
    print(f"kit.data: {line}", file=sys.stderr, flush=True)


def _finish(recipe, target: Path, stamp: str, result: Conversion, counter: TokenCounter, lengths: list[int] | None,
            asked, sampled: int | None, progress=None) -> Path:
    """Split, write and describe the dataset; `lengths` were measured, else `asked` is `counter`'s question."""
    from kit.runs import atomic_dir

    tokenizer_problem = None
    if not result.conversations:
        by_reason = result.by_reason()
        reasons = ", ".join(f"{code} {n}" for code, n in by_reason.items())
        # The most common reason in words ("missing field 'body'"), and the rejects kept where they can be read.
        common = max(by_reason, key=by_reason.get) if by_reason else None
        example = next((r for r in result.rejects if r.get("code") == common), None)
        said = f"; most often: {example['reason']} ({_describe_source({**example, 'records': [0]})})" if example else ""
        saved = ""
        if result.rejects:
            path = dataset_dir(recipe).parent / "rejects.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_jsonl(path, result.rejects)
            saved = f"; every record left out is in {path}"
        raise KitError(
            f"data.sources: no usable conversation in {result.input} records ({reasons or 'none read'}){said}{saved}; "
            f"check the template's field names and roles, or see `python -m kit.data preview`"
        )
    data = recipe.data
    if data.stratify_by and not any(data.stratify_by in c.metadata for c in result.conversations):
        fields = sorted({key for c in result.conversations for key in c.metadata})
        raise KitError(f"data.stratify_by: no conversation has the metadata field {data.stratify_by!r}; use one of "
                       f"{', '.join(fields) or '(none: the template keeps no metadata)'} or unset it")
    splits = split(result.conversations, data.validation_fraction, data.test_fraction, recipe.seed, data.stratify_by)
    augmented = []
    if data.augment.enabled:
        augmented = [Conversation(**copy) for copy in augment([c.row() for c in splits["train"]], data.augment, recipe.seed)]
    splits["train"] = splits["train"] + augmented
    kept_records = sum(len(c.source["records"]) for c in result.conversations)
    stats = {
        "input": result.input,
        "kept": kept_records,
        "rejected": result.rejected,
        "duplicates": result.duplicates,
        "rejected_by_reason": result.by_reason(),
        "conversations": {
            "assembled": result.assembled or len(result.conversations) + result.duplicate_conversations
            + result.rejected_conversations,
            "kept": len(result.conversations),
            "rejected": result.rejected_conversations,
            "duplicates": result.duplicate_conversations,
        },
        "pii": dict(sorted(result.pii.items())),
        "splits": {name: len(splits[name]) for name in DATASET_SPLITS},
        "augmented": len(augmented),
        "token_lengths": None,  # below, once counted
        "sources": result.sources,
    }
    if result.threads:
        stats["threads"] = dict(result.threads)
    assert stats["input"] == stats["kept"] + stats["rejected"] + stats["duplicates"], stats
    if progress:
        progress(f"writing {len(result.conversations):,} conversations and {len(result.rejects):,} rejects")
    with atomic_dir(target) as scratch:
        digest = hashlib.sha256()
        for name in DATASET_SPLITS:
            write_jsonl(scratch / f"{name}.jsonl", splits[name], digest)
        write_jsonl(scratch / "rejects.jsonl", result.rejects)
        if lengths is None:
            lengths, tokenizer_problem = counter.collect(asked)
            lengths = lengths or []
        counter.close()
        stats["token_lengths"] = (_percentiles(lengths) if sampled is None or not lengths
                                  else {**_percentiles(lengths), "sample": sampled})
        if tokenizer_problem:
            stats["token_lengths_unavailable"] = tokenizer_problem
        if data.folds:
            originals = [c for name in ("train", "validation") for c in splits[name] if "augmented" not in c.metadata]
            parts = folds(originals, data.folds, recipe.seed, data.stratify_by)
            (scratch / "folds").mkdir()
            for k, part in enumerate(parts):
                write_jsonl(scratch / "folds" / f"fold_{k}.jsonl", part)
            stats["folds"] = [len(part) for part in parts]
        stats["sha256"] = digest.hexdigest()
        stats["fingerprint"] = stamp
        (scratch / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        templates = {Path(s.template).stem: load_template(s.template).description for s in data.sources}
        (scratch / "README.md").write_text(_card(recipe, stats, templates), encoding="utf-8")
    print(
        f"kit.data: {stats['input']} records -> {stats['conversations']['kept']} conversations "
        f"({stats['kept']} records kept, {stats['rejected']} rejected, {stats['duplicates']} duplicates; "
        f"see {target / 'rejects.jsonl'}); split {stats['splits']}",
        flush=True,
    )
    return target


def load_split(recipe, name: str) -> list[dict]:
    return read_jsonl(dataset_dir(recipe) / f"{name}.jsonl")


def _describe_source(source: dict) -> str:
    where = f"line {source['line']}" if "line" in source else source.get("path", "")
    if "line" in source and "path" in source:
        where += f", {source['path']}"
    text = f"{source['file']} record {source['record']} ({where})"
    if len(source["records"]) > 1:
        text += f"; records {', '.join(map(str, source['records']))}"
    return text


def preview(recipe, n: int = 5) -> str:
    """The first `n` converted conversations with their source file and record numbers, and the counts."""
    check_settings(recipe)
    result = convert(recipe_sources(recipe), recipe.data.system_prompt, settings_from(recipe))
    lines = []
    for conversation in result.conversations[:n]:
        lines.append(f"--- {_describe_source(conversation.source)} [{conversation.source['template']}]")
        if conversation.metadata:
            lines.append(f"metadata: {json.dumps(conversation.metadata, ensure_ascii=False)}")
        for message in conversation.chat():
            lines.append(f"[{message['role']}] {message['content']}")
    reasons = ", ".join(f"{code} {count}" for code, count in result.by_reason().items())
    lines.append(
        f"--- {result.input} records: {result.kept} kept in {len(result.conversations)} conversations, "
        f"{result.rejected} rejected, {result.duplicates} duplicates" + (f" ({reasons})" if reasons else "")
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from kit.cli import ArgumentParser, add_recipe_arguments, run_cli
    from kit.recipe import load_recipe

    parser = ArgumentParser(prog="python -m kit.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("templates", help="list the log formats")
    sub.add_parser("reference", help="print the template reference (Markdown, docs/templates.md)")
    for name, text in (("build", "write the dataset folder"), ("preview", "print converted conversations")):
        child = sub.add_parser(name, help=text)
        add_recipe_arguments(child)
        if name == "preview":
            child.add_argument("-n", type=int, default=5, help="how many conversations")
        else:
            child.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)

    def work() -> None:
        if args.command == "templates":
            sys.stdout.write(template_listing())
            return
        if args.command == "reference":
            sys.stdout.write(template_reference())
            return
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "build":
            print(f"dataset: {build(recipe, force=args.force)}")
        else:
            sys.stdout.write(preview(recipe, args.n))

    run_cli(work)
