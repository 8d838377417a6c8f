"""Support logs -> chat conversations, with every input record accounted for.

    python -m kit.data templates                      # the log formats kit reads
    python -m kit.data preview recipes/quickstart.yaml -n 5
    python -m kit.data build recipes/quickstart.yaml

A log format is a YAML file in `data_templates/` that maps an export's fields to conversations, so a
new export format needs no Python. `build` writes `<run>/dataset/`: `train/validation/test.jsonl`
(one `{"id", "messages", "metadata", "source"}` per line), `rejects.jsonl` (each dropped record with
its file, record and line number and the reason) and `stats.json` (`input = kept + rejected +
duplicates`). The folder is written whole or not at all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kit.errors import KitError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "data_templates"
DATASET_SPLITS = ("train", "validation", "test")


class TemplateFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(description="Field holding the customer's message.")
    answer: str = Field(description="Field holding the agent's reply.")
    id: str | None = Field(None, description="Field holding the ticket / record id, kept in `metadata`.")
    metadata: list[str] = Field(default_factory=list, description="Fields copied into `metadata` (intent...).")


class Template(BaseModel):
    """A declarative log format."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field(description="One line shown by `python -m kit.data templates`.")
    reader: Literal["csv"] = Field(description="How the file is read.")
    delimiter: str = Field("auto", description="Field separator, or `auto` to sniff `,` `;` tab or `|`.")
    shape: Literal["qa_pairs"] = Field("qa_pairs", description="How records become conversations.")
    fields: TemplateFields


def find_template(name: str) -> Path:
    """A template name (`qa_csv`) or a path to a template YAML -> the YAML file."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) or os.sep in name else []
    candidates += [Path("data_templates") / f"{name}.yaml", TEMPLATES_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml")))
    raise KitError(f"data.sources[].template: no template {name!r}; use one of {known} or a path to a YAML file")


def load_template(name: str) -> Template:
    path = find_template(name)
    try:
        return Template.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise KitError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise KitError("\n".join(lines)) from None


@dataclass
class Conversion:
    """What a set of sources turned into."""

    conversations: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    input: int = 0
    duplicates: int = 0

    @property
    def rejected(self) -> int:
        return len(self.rejects) - self.duplicates


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte string")


def _clean(text: str) -> str:
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _csv_records(path: Path, template: Template):
    """Yield (record number, first line number, row dict or None, problem) for each CSV record."""
    text = _read_text(path)
    delimiter = template.delimiter
    if delimiter == "auto":
        try:
            delimiter = csv.Sniffer().sniff(text[:20000], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [name.strip() for name in header]
    needed = [template.fields.question, template.fields.answer]
    missing = [name for name in needed if name not in header]
    if missing:
        raise KitError(
            f"{path}: header has no column {', '.join(map(repr, missing))} (columns: {', '.join(header)}); "
            f"fix the template's fields or the file"
        )
    line = reader.line_num + 1
    record = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            record += 1
            yield record, line, None, f"unreadable CSV record ({exc})"
            line = reader.line_num + 1
            continue
        record += 1
        if not row or all(not cell.strip() for cell in row):
            line = reader.line_num + 1
            record -= 1  # blank lines are layout, not records
            continue
        if len(row) != len(header):
            yield record, line, None, f"expected {len(header)} fields, got {len(row)}"
        else:
            yield record, line, dict(zip(header, row)), None
        line = reader.line_num + 1


def convert(sources: list[tuple[str, Template]], system_prompt: str | None) -> Conversion:
    """Read each (path, template) source into conversations, rejects and duplicate counts."""
    result = Conversion()
    seen: dict[str, str] = {}
    for path_text, template in sources:
        path = Path(path_text)
        if not path.is_file():
            raise KitError(f"data.sources[].path: {path_text} not found; point it at an export file")
        for record, line, row, problem in _csv_records(path, template):
            result.input += 1
            where = {"file": path_text, "record": record, "line": line}
            if problem is None:
                question = _clean(row[template.fields.question])
                answer = _clean(row[template.fields.answer])
                if not question:
                    problem = f"empty {template.fields.question}"
                elif not answer:
                    problem = f"empty {template.fields.answer}"
            if problem is not None:
                result.rejects.append({**where, "reason": problem, "kind": "rejected"})
                continue
            key = hashlib.sha256(f"{question.lower()}\x00{answer.lower()}".encode()).hexdigest()
            if key in seen:
                result.duplicates += 1
                result.rejects.append({**where, "reason": f"duplicate of {seen[key]}", "kind": "duplicate"})
                continue
            seen[key] = f"{path_text} record {record}"
            metadata = {name: row[name].strip() for name in template.fields.metadata if name in row}
            if template.fields.id:
                metadata["id"] = row.get(template.fields.id, "").strip()
            messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            result.conversations.append(
                {"id": f"{path.name}:{record}", "messages": messages, "metadata": metadata, "source": where}
            )
    return result


def split(conversations: list[dict], validation: float, test: float, seed: int) -> dict[str, list[dict]]:
    """A seeded shuffle cut into exact shares (at least one test conversation when test > 0)."""
    order = list(conversations)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = max(1, round(n * test)) if test > 0 and n >= 3 else 0
    n_val = max(1, round(n * validation)) if validation > 0 and n - n_test >= 2 else 0
    return {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def fingerprint(recipe) -> str:
    """Changes whenever the dataset would: the data section, the seed, and the bytes of every source."""
    digest = hashlib.sha256(json.dumps([recipe.data.model_dump(mode="json"), recipe.seed]).encode())
    for source in recipe.data.sources:
        path = Path(source.path)
        digest.update(path.read_bytes() if path.is_file() else b"missing")
        digest.update(find_template(source.template).read_bytes())
    return digest.hexdigest()


def dataset_dir(recipe) -> Path:
    return recipe.run_dir / "dataset"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build(recipe, force: bool = False) -> Path:
    """Write the dataset folder for a recipe (kept as is when it is complete and up to date)."""
    target = dataset_dir(recipe)
    stamp = fingerprint(recipe)
    stats_path = target / "stats.json"
    if not force and stats_path.is_file() and json.loads(stats_path.read_text()).get("fingerprint") == stamp:
        return target
    sources = [(s.path, load_template(s.template)) for s in recipe.data.sources]
    result = convert(sources, recipe.data.system_prompt)
    if not result.conversations:
        raise KitError(
            f"data.sources: no usable conversation in {result.input} records "
            f"({result.rejected} rejected, {result.duplicates} duplicates); check the template's field names"
        )
    splits = split(result.conversations, recipe.data.validation_fraction, recipe.data.test_fraction, recipe.seed)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".dataset.tmp-", dir=target.parent))
    except OSError as exc:
        raise KitError(f"output_dir: cannot write under {target.parent} ({exc.strerror}); choose a writable folder") from None
    try:
        digest = hashlib.sha256()
        for name in DATASET_SPLITS:
            _write_jsonl(scratch / f"{name}.jsonl", splits[name])
            digest.update((scratch / f"{name}.jsonl").read_bytes())
        _write_jsonl(scratch / "rejects.jsonl", result.rejects)
        stats = {
            "input": result.input,
            "kept": len(result.conversations),
            "rejected": result.rejected,
            "duplicates": result.duplicates,
            "splits": {name: len(splits[name]) for name in DATASET_SPLITS},
            "sha256": digest.hexdigest(),
            "fingerprint": stamp,
        }
        assert stats["input"] == stats["kept"] + stats["rejected"] + stats["duplicates"], stats
        (scratch / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"kit.data: {stats['input']} records -> {stats['kept']} conversations "
        f"({stats['rejected']} rejected, {stats['duplicates']} duplicates; see {target / 'rejects.jsonl'}); "
        f"split {stats['splits']}",
        flush=True,
    )
    return target


def load_split(recipe, name: str) -> list[dict]:
    return read_jsonl(dataset_dir(recipe) / f"{name}.jsonl")


def _templates_listing() -> str:
    lines = []
    for path in sorted(TEMPLATES_DIR.glob("*.yaml")):
        lines.append(f"{path.stem:<20} {load_template(str(path)).description}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    from kit.cli import add_recipe_arguments, run_cli
    from kit.recipe import load_recipe

    parser = argparse.ArgumentParser(prog="python -m kit.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("templates", help="list the log formats")
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
            sys.stdout.write(_templates_listing())
            return
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "build":
            print(f"dataset: {build(recipe, force=args.force)}")
            return
        sources = [(s.path, load_template(s.template)) for s in recipe.data.sources]
        result = convert(sources, recipe.data.system_prompt)
        for conversation in result.conversations[: args.n]:
            source = conversation["source"]
            print(f"--- {source['file']} record {source['record']} (line {source['line']})")
            for message in conversation["messages"]:
                print(f"[{message['role']}] {message['content']}")
        print(f"--- {result.input} records: {len(result.conversations)} kept, {result.rejected} rejected, "
              f"{result.duplicates} duplicates")

    run_cli(work)


if __name__ == "__main__":
    main()
