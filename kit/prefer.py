"""Preference tuning: the tuned model learns which answers a support lead prefers (TRL's DPOTrainer or KTOTrainer).

    python -m kit.prefer recipes/quickstart.yaml [--set prefer.max_prompts=32 ...]
    python -m kit.prefer recipes/quickstart.yaml --resume     # continue after Ctrl-C or a crash

Runs after `kit.sft`, on top of its adapter. The pairs come from (`prefer.sources`):
- `votes`: the arena's blind votes, `<run>/feedback/preferences.jsonl` (TRL's conversational preference
  format, written by `kit.chat`); a multi-turn prompt is kept whole, and a line that is not a valid row is
  reported with its line number and skipped, never fatal;
- `mistakes`: the tuned model answers a seeded sample of `prefer.max_prompts` training prompts; an answer that
  invents facts or contact details (`kit.facts`: values the training answers never state), contradicts a value
  its reference states (a "90 days" warranty where the reference says "1-year"), or scores below
  `prefer.min_rouge_l` against the reference becomes `rejected` (the worst one, with `prefer.samples`), the
  reference answer `chosen` (with `prefer.samples`, the best of the model's own clean sampled answers when
  there is one, and with `prefer.reference_pairs` the reference in a second pair). The answers are cached in
  `<run>/prefer_cache/answers.json`, keyed by the tuned weights, the data and the generation settings, so a
  rerun reuses them (and judges them again: changing `prefer.min_rouge_l` or the allowlist costs no generation).

`prefer.method: dpo` (the default) learns from the pairs; `kto` from single answers: each pair's chosen answer
(desirable) and rejected one (undesirable), and the arena's all-bad answers, `<run>/feedback/all_bad.jsonl`
(TRL's unpaired format), which DPO cannot use.

Checkpoints go to `<run>/prefer_checkpoints/` every `prefer.save_steps` and on Ctrl-C; `--resume` continues from
the newest complete one, and the folder is removed once the adapter is written.

Writes `<run>/preferred/`: a PEFT adapter (for the base model, or for `<run>/model/` after a `full`/`freeze`
run) with its tokenizer and `manifest.json`, built in a scratch folder beside it and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kit import data, models, speed
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.facts import FactBook
from kit.feedback import ALL_BAD, NOT_JSON, PREFERENCES, feedback_dir, is_messages, jsonl_rows
from kit.generate import eos_ids
from kit.masking import ensure_chat_template, render
from kit.recipe import Recipe, load_recipe
from kit.runs import atomic_dir, package_versions, tuned_adapter, tuned_model_dir, write_json

CACHE_VERSION = 3


# ---------------------------------------------------------------- pairs


@dataclass
class Pair:
    """One preference pair in TRL's conversational format, and where it came from."""

    prompt: list[dict]  # the whole conversation before the answer (system, user, assistant, ..., user)
    chosen: list[dict]  # [{"role": "assistant", "content": ...}]
    rejected: list[dict]
    source: str  # "votes" or "mistakes"
    reasons: list[str] = field(default_factory=list)  # why the rejected answer was a mistake
    chosen_from: str = "reference"  # mistakes: "reference" (the training answer) or "sample" (the model's own, clean)

    def row(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class Votes:
    """The arena's preference pairs, and the lines that could not be read."""

    pairs: list[Pair] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # "preferences.jsonl:<line>: <why>"


def _feedback_rows(path: Path, keys: tuple[str, ...], label: bool = False) -> tuple[list[dict], list[str]]:
    """The rows of a feedback file with a list of messages under each of `keys` (and, with `label`, `"label": false`)
    whose prompt ends with a user message; and each other line as "<file>:<line>: <why>"."""
    rows, corrupt = [], []
    for number, row in jsonl_rows(path):
        if row is NOT_JSON:
            why = "not JSON"
        elif bad := [key for key in keys if not isinstance(row, dict) or not is_messages(row.get(key))]:
            why = f"{', '.join(bad)} missing or not a list of messages"
        elif label and row.get("label") is not False:
            why = "label missing or not false"
        elif row["prompt"][-1]["role"] != "user":
            why = "prompt does not end with a user message"
        else:
            rows.append(row)
            continue
        corrupt.append(f"{path.name}:{number}: {why}")
    return rows, corrupt


def load_votes(path: Path) -> Votes:
    """Read a preferences.jsonl; each unreadable line is listed in `corrupt` and skipped."""
    rows, corrupt = _feedback_rows(path, ("prompt", "chosen", "rejected"))
    return Votes([Pair(row["prompt"], row["chosen"], row["rejected"], "votes") for row in rows], corrupt)


@dataclass
class AllBad:
    """The arena's all-bad answers in TRL's unpaired format (prompt, completion, label False), and the lines that
    could not be read."""

    rows: list[dict] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # "all_bad.jsonl:<line>: <why>"


def load_all_bad(path: Path) -> AllBad:
    """Read an all_bad.jsonl; each unreadable line is listed in `corrupt` and skipped."""
    rows, corrupt = _feedback_rows(path, ("prompt", "completion"), label=True)
    return AllBad([{"prompt": row["prompt"], "completion": row["completion"], "label": False} for row in rows], corrupt)


def kto_rows(pairs: list[Pair], all_bad: list[dict], seed: int) -> list[dict]:
    """KTO's single answers: each pair's chosen answer desirable (label True), its rejected one undesirable, and
    every all-bad answer undesirable; shuffled (seeded) so that a pair's two answers rarely share a batch, where
    KTO's KL estimate would pair an answer with its own prompt."""
    rows = [row for pair in pairs for row in ({"prompt": pair.prompt, "completion": pair.chosen, "label": True},
                                              {"prompt": pair.prompt, "completion": pair.rejected, "label": False})]
    rows += [{"prompt": row["prompt"], "completion": row["completion"], "label": False} for row in all_bad]
    random.Random(seed).shuffle(rows)
    return rows


def length_grouped(rows: list[dict], tokenizer, batch_size: int, seed: int) -> list[dict]:
    """DPO rows in transformers' length-grouped order: a seeded shuffle, then sorted by length (prompt tokens plus the
    longer answer's) within mega-batches of about a quarter of the rows. A batch pads every prompt to its longest and
    every answer to its longest, so similar lengths together pad less: 9% fewer tokens on the quickstart's 118 pairs."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lengths = [tokens(render(tokenizer, row["prompt"], add_generation_prompt=True))
               + max(tokens(row["chosen"][0]["content"]), tokens(row["rejected"][0]["content"])) for row in rows]
    order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    return [rows[i] for i in order]


def mistake_reasons(book: FactBook, answer: str, reference: str, prompt: str, min_rouge_l: float,
                    finished: bool = True) -> list[str]:
    """Why an answer is a mistake against its reference (empty: it is not).

    An answer cut off by the length limit (`finished=False`) is scored against as many words of the reference:
    a low score must mean a wrong answer, not a long one (rejecting long answers would teach brevity).
    """
    checked = book.check(answer, reference, prompt)
    reasons = [f"invented contact {f.kind}: {f.text}" for f in checked.invented_contacts]
    reasons += [f"invented {f.kind}: {f.text}" for f in checked.invented if not f.is_contact]
    reasons += [f"contradicts the reference {f.kind}: {f.text}" for f in checked.contradicted]
    compared = reference if finished else " ".join(reference.split()[: max(1, len(answer.split()))])
    rouge = rouge_l(compared, answer)
    if rouge < min_rouge_l:
        reasons.append(f"ROUGE-L {rouge:.3f} < {min_rouge_l}")
    return reasons


def rouge_l(reference: str, answer: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int = 8, samples: int = 0, temperature: float = 1.0) -> list[tuple[str, bool]]:
    """Greedy (answer, finished) pairs, batched with left padding; `finished`: it ended on an end-of-turn token
    rather than at `max_new_tokens`. With `samples`, that many sampled answers per prompt instead (prompt i's
    are rows i*samples ... i*samples+samples-1; seed torch first for reproducible ones). Batches of equal size, at
    most `batch_size` prompts: a batch runs until its longest answer ends, so 64 prompts at 48 go as 2 x 32."""
    import torch

    device = next(model.parameters()).device
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    batch_size = math.ceil(len(texts) / math.ceil(len(texts) / batch_size)) if texts else batch_size
    eos = eos_ids(model, tokenizer)
    per_prompt = max(samples, 1)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0,
                "num_return_sequences": samples} if samples else {"do_sample": False}
    answers: list[tuple[str, bool]] = [("", False)] * (len(texts) * per_prompt)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            with torch.no_grad():
                output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        **sampling)
            for i, row in enumerate(output[:, batch["input_ids"].shape[1]:]):
                finished = any(int(token) in eos for token in row)
                answers[start * per_prompt + i] = (tokenizer.decode(row, skip_special_tokens=True).strip(), finished)
            kind = f"{samples} sampled answers to" if samples else "answered"
            print(f"kit.prefer: {kind} {min(start + batch_size, len(texts))} of {len(texts)} training prompts", flush=True)
    finally:
        tokenizer.padding_side = side
    return answers


@dataclass
class Mistakes:
    pairs: list[Pair]
    checked: int  # training prompts answered
    cached: bool  # the answers were read from <run>/prefer_cache/ rather than generated
    wrong: int = 0  # prompts with a wrong answer (each gives one pair, or two with `prefer.reference_pairs`)


def _cache_key(recipe: Recipe, weights: Path) -> str:
    """What the tuned model's answers depend on (how they are judged does not: a rerun rejudges cached answers)."""
    stats = json.loads((data.dataset_dir(recipe) / "stats.json").read_text())
    manifest = (recipe.run_dir / "manifest.json").read_bytes()  # rewritten by every kit.sft run
    p = recipe.prefer
    payload = json.dumps([CACHE_VERSION, stats["sha256"], hashlib.sha256(manifest).hexdigest(), str(weights), recipe.seed,
                          p.max_prompts, p.max_new_tokens, p.samples, p.temperature])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def allowlist(recipe: Recipe) -> list[str]:
    """The company's public contact details: what the data stage keeps, and what the eval does not count as a leak."""
    return [*recipe.data.pii.allowlist, *recipe.eval.leak_allowlist]


def severity(reasons: list[str]) -> tuple[bool, int]:
    """How wrong an answer with these `mistake_reasons` is: (it invents a contact, facts it invents or contradicts)."""
    return (any(r.startswith("invented contact") for r in reasons), sum(not r.startswith("ROUGE-L") for r in reasons))


def pair_for(book: FactBook, prompt: list[dict], reference: str, own: list[tuple[str, bool]], min_rouge_l: float,
             reference_pair: bool = True) -> list[Pair]:
    """The pairs one training prompt gives: none when none of the model's answers (`own`: greedy first, then the
    samples) is wrong. `rejected`: the worst wrong answer (invented contacts first, then the most facts invented or
    contradicted: what preference tuning is for; the greedy one among equals, what the model says by default).
    `chosen`: the best of the model's own clean, finished answers (highest ROUGE-L against the reference), else the
    reference. DPO between two answers the model gives keeps its wording, but its clean answers mostly state no
    fact at all, so alone they teach it to say less; `reference_pair` adds the reference answer against the same
    rejected one, which teaches the facts (docs/preference.md measures both)."""
    asked = " ".join(m["content"] for m in prompt if m["role"] == "user")
    judged = [(text, finished, mistake_reasons(book, text, reference, asked, min_rouge_l, finished)) for text, finished in own]
    wrong = [(text, reasons) for text, _, reasons in judged if reasons and text.strip() != reference.strip()]
    if not wrong:
        return []
    rejected, reasons = max(wrong, key=lambda w: severity(w[1]))  # max keeps the first of equals
    clean = [text for text, finished, why in judged if finished and not why and text.strip() != rejected.strip()]
    chosen = [(max(clean, key=lambda text: rouge_l(reference, text)), "sample")] if clean else []
    if not chosen or (reference_pair and chosen[0][0].strip() != reference.strip()):
        chosen.append((reference, "reference"))
    return [Pair(prompt, [{"role": "assistant", "content": text}], [{"role": "assistant", "content": rejected}],
                 "mistakes", reasons, source) for text, source in chosen]


def _cached_answers(cache: Path, key: str, prompts: int) -> list[list[tuple[str, bool]]] | None:
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    answers = stored.get("answers")
    if not (isinstance(answers, list) and len(answers) == prompts
            and all(isinstance(own, list) and own and all(isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
                                                           and isinstance(a[1], bool) for a in own) for own in answers)):
        print(f"kit.prefer: {cache} is damaged; answering the prompts again", flush=True)
        return None
    return [[(text, finished) for text, finished in own] for own in answers]


def mistake_pairs(recipe: Recipe, tokenizer, load_tuned) -> Mistakes:
    """Pairs from the tuned model's own mistakes on a seeded sample of training prompts (its answers cached)."""
    weights = tuned_adapter(recipe) or tuned_model_dir(recipe)
    train = [c for c in data.load_split(recipe, "train") if c["messages"] and c["messages"][-1]["role"] == "assistant"]
    sample = random.Random(recipe.seed).sample(train, min(recipe.prefer.max_prompts, len(train)))
    prompts = [c["messages"][:-1] for c in sample]
    references = [c["messages"][-1]["content"] for c in sample]
    p = recipe.prefer
    key = _cache_key(recipe, weights)
    cache = recipe.run_dir / "prefer_cache" / "answers.json"
    answers = _cached_answers(cache, key, len(sample)) if cache.is_file() else None
    cached = answers is not None
    if cached:
        print(f"kit.prefer: reusing the tuned model's answers to {len(sample)} training prompts from {cache}", flush=True)
    else:
        print(f"kit.prefer: the tuned model answers {len(sample)} training prompts to find its mistakes", flush=True)
        import torch

        model = load_tuned()
        # as many answers a batch as the sampling pass below (quickstart, 2 CPU cores: 64 prompts in batches of 12
        # took 148 s, in 2 of 32 103 s)
        greedy = generate(model, tokenizer, prompts, p.max_new_tokens, recipe.eval.batch_size * max(p.samples, 1))
        sampled = []
        if p.samples:
            torch.manual_seed(recipe.seed)
            sampled = generate(model, tokenizer, prompts, p.max_new_tokens, recipe.eval.batch_size, p.samples, p.temperature)
        del model
        answers = [[greedy[i], *sampled[i * p.samples:(i + 1) * p.samples]] for i in range(len(sample))]
        write_json(cache, {"key": key, "answers": answers})
    book = FactBook((c["messages"][-1]["content"] for c in train), allowlist(recipe), recipe.data.pii.phone_regions)
    made = [pair_for(book, prompt, reference, own, p.min_rouge_l, p.reference_pairs)
            for prompt, reference, own in zip(prompts, references, answers)]
    return Mistakes([pair for pairs in made for pair in pairs], len(sample), cached, wrong=sum(bool(pairs) for pairs in made))


# ---------------------------------------------------------------- measuring a preference


def completion_logprob(model, tokenizer, prompt: list[dict], completion: str) -> float:
    """Sum of the model's log-probabilities of an assistant answer after a conversation (its end-of-turn included)."""
    import torch

    before = tokenizer(render(tokenizer, prompt, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    full = tokenizer(render(tokenizer, [*prompt, {"role": "assistant", "content": completion}]),
                     add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(before, full)) if a != b), min(len(before), len(full)))
    device = next(model.parameters()).device
    ids = torch.tensor([full], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logps = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logps[start - 1:].sum())


# ---------------------------------------------------------------- the stage


def _policy(recipe: Recipe, model_path: str, plan: speed.Plan):
    """(model to train, peft_config or None, what it sits on): the SFT adapter itself, or a new LoRA on a full tuned model.
    Under CPU bf16 autocast the frozen base is held in bf16, as kit.sft holds it; the adapter stays float32."""
    from peft import LoraConfig, PeftModel

    extra = {"attn_implementation": plan.attn_implementation,
             "dtype": speed.frozen_base_dtype(plan.cpu_bf16_autocast, recipe.model.dtype)}
    adapter = tuned_adapter(recipe)
    if adapter is not None:
        base = models.load_model(recipe.model, path=model_path, **extra)
        models.check_weight_files(recipe.model, adapter, what="adapter")
        # is_trainable: the SFT adapter keeps learning; TRL copies it as the frozen reference ("ref" adapter).
        trainable = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
        return trainable, None, {"model": recipe.model.name, "tuned_model": None, "sft_adapter": str(adapter)}
    folder = tuned_model_dir(recipe)
    if folder is None:
        raise KitError(f"prefer: no tuned model in {recipe.run_dir}; run `python -m kit.sft <recipe>` first")
    lora = recipe.sft.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                        task_type="CAUSAL_LM")
    return models.load_model(recipe.model, path=str(folder), **extra), config, {"model": recipe.model.name,
                                                                               "tuned_model": str(folder), "sft_adapter": None}


def _config(recipe: Recipe, output_dir: Path, rows: int, plan: speed.Plan):
    """TRL's DPOConfig, or KTOConfig for `prefer.method: kto`; `rows`: pairs (DPO) or single answers (KTO); `plan`:
    kit.sft's speed settings (bf16 autocast on a CPU with native bf16, gradient checkpointing only where memory asks)."""
    import torch
    from trl import DPOConfig, KTOConfig

    p, cuda = recipe.prefer, torch.cuda.is_available()
    common = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=min(p.batch_size, rows),
        gradient_accumulation_steps=1,
        learning_rate=p.learning_rate,
        lr_scheduler_type=recipe.sft.lr_scheduler,
        warmup_steps=recipe.sft.warmup_steps,
        num_train_epochs=p.epochs,
        max_steps=p.max_steps or -1,
        beta=p.beta,
        max_length=recipe.sft.max_length,
        # batches in the rows' order: shuffled by kit, seeded (DPO: `length_grouped`; KTO: `kto_rows`)
        train_sampling_strategy="sequential",
        logging_steps=recipe.sft.logging_steps,
        save_strategy="steps",  # for --resume; the folder is removed once the preferred adapter is written
        save_steps=p.save_steps,
        save_total_limit=2,  # the newest complete checkpoint survives a kill while the next one is written
        report_to=[],
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=(cuda and torch.cuda.is_bf16_supported()) or plan.cpu_bf16_autocast,
        fp16=False,
        gradient_checkpointing=plan.gradient_checkpointing,  # TRL's default is on; off on a CPU, where time is the limit
        use_cpu=not cuda,
        dataloader_num_workers=0,
    )
    if p.method == "kto":
        # KTO's KL estimate pairs each answer with the next row's prompt (`kto_rows` shuffles them once, seeded)
        return KTOConfig(**common)
    return DPOConfig(
        **common,
        loss_type=[p.loss_type, "sft"] if p.sft_weight else [p.loss_type],
        loss_weights=[1.0, p.sft_weight] if p.sft_weight else None,
        label_smoothing=0.1 if p.loss_type == "robust" else 0.0,
    )


def run(recipe: Recipe, callbacks: list | None = None, resume: bool = False) -> Path:
    """Preference-tune the run's tuned model on votes and mistake pairs; returns `<run>/preferred/`.

    `prefer.method` picks TRL's DPOTrainer (pairs) or KTOTrainer (single answers: the pairs' answers, and the
    arena's all-bad answers). `callbacks`: transformers `TrainerCallback`s handed to the trainer (progress bars,
    tests that observe it).
    `resume`: continue from the newest complete checkpoint in `<run>/prefer_checkpoints/` (Ctrl-C saves one; a
    checkpoint is also saved every `prefer.save_steps`), on the same pairs (the mistakes come from the cache).
    """
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer, KTOTrainer

    from kit.trainer import Guard, GuardCallback, last_complete_checkpoint, stop_on_interrupt

    started = time.time()
    print("kit.prefer: resolved recipe\n" + recipe.to_yaml(), flush=True)
    if tuned_adapter(recipe) is None and tuned_model_dir(recipe) is None:
        raise KitError(f"prefer: no tuned model in {recipe.run_dir}; run `python -m kit.sft <recipe>` first")
    checkpoints = recipe.run_dir / "prefer_checkpoints"
    resume_from = last_complete_checkpoint(checkpoints, True, "kit.prefer") if resume else None
    if resume and resume_from is None:
        raise KitError(f"--resume: no complete checkpoint in {checkpoints}; run without --resume to start")
    if not resume:  # a fresh start: an earlier, interrupted run's checkpoints must not be resumed later by mistake
        shutil.rmtree(checkpoints, ignore_errors=True)
    model_path = models.resolve(recipe.model.name)
    # kit.sft's speed settings for a LoRA, but dropout: TRL's preference trainers turn it off
    plan = replace(speed.plan_for(recipe, model_path, method="lora"), cpu_lora_dropout=False)
    print(f"kit.prefer: speed settings: {plan.describe()}", flush=True)
    speed.apply_process_settings(plan)
    data.build(recipe)
    set_seed(recipe.seed)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)

    sources = recipe.prefer.sources
    pairs: list[Pair] = []
    kto = recipe.prefer.method == "kto"
    all_bad: list[dict] = []
    counts = {"votes": 0, "all_bad": 0, "mistakes": 0, "mistakes_checked": 0, "mistakes_cached": False, "corrupt": []}
    if "votes" in sources:
        path = feedback_dir(recipe) / PREFERENCES
        votes = load_votes(path)
        if votes.corrupt:
            print(f"kit.prefer: {path}: skipped {len(votes.corrupt)} corrupt line(s): " + "; ".join(votes.corrupt[:5]),
                  flush=True)
        pairs += votes.pairs
        counts.update(votes=len(votes.pairs), corrupt=votes.corrupt)
        print(f"kit.prefer: {len(votes.pairs)} preference pairs from the arena's votes ({path})", flush=True)
        bad_path = feedback_dir(recipe) / ALL_BAD
        bad = load_all_bad(bad_path)
        if kto:
            if bad.corrupt:
                print(f"kit.prefer: {bad_path}: skipped {len(bad.corrupt)} corrupt line(s): " + "; ".join(bad.corrupt[:5]),
                      flush=True)
            all_bad = bad.rows
            counts.update(all_bad=len(all_bad), corrupt=votes.corrupt + bad.corrupt)
            print(f"kit.prefer: {len(all_bad)} answers voted all bad ({bad_path})", flush=True)
        elif bad.rows:
            print(f"kit.prefer: {len(bad.rows)} answers voted all bad ({bad_path}) have no better answer to pair with: "
                  "DPO leaves them out; `prefer.method: kto` learns from them", flush=True)
    if "mistakes" in sources:
        mistakes = mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe))
        pairs += mistakes.pairs
        counts.update(mistakes=len(mistakes.pairs), mistakes_checked=mistakes.checked, mistakes_wrong=mistakes.wrong,
                      mistakes_cached=mistakes.cached,
                      mistakes_own_chosen=sum(pair.chosen_from == "sample" for pair in mistakes.pairs))
        print(f"kit.prefer: the tuned model answered {mistakes.wrong} of {mistakes.checked} training prompts wrongly: "
              f"{len(mistakes.pairs)} mistake pairs", flush=True)
    if not pairs and not all_bad:
        raise KitError("prefer.sources: no preference pair to learn from; collect votes with `python -m kit.chat <recipe> "
                       "--blind`, or add `mistakes` to prefer.sources")
    rows = (kto_rows(pairs, all_bad, recipe.seed) if kto else
            length_grouped([pair.row() for pair in pairs], tokenizer, recipe.prefer.batch_size, recipe.seed))
    if kto and min(recipe.prefer.batch_size, len(rows)) < 2:
        raise KitError(f"prefer.batch_size: KTO needs at least 2 answers a step (its KL estimate pairs each answer with "
                       f"another row's prompt); have batch_size {recipe.prefer.batch_size} and {len(rows)} answer(s)")

    model, peft_config, base = _policy(recipe, model_path, plan)
    guard = Guard()
    trainer_class = KTOTrainer if kto else DPOTrainer
    # The guard last: it sees a Ctrl-C that arrived during this step's other callbacks, and saves at its end.
    trainer = trainer_class(model=model, args=_config(recipe, checkpoints, len(rows), plan), train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, peft_config=peft_config,
                            callbacks=[*(callbacks or []), GuardCallback(guard)])
    what = "answers" if kto else "pairs"
    if len(trainer.train_dataset) == 0:  # TRL drops rows whose prompt alone fills max_length
        raise KitError(f"sft.max_length: every one of the {len(rows)} preference prompts fills sft.max_length="
                       f"{recipe.sft.max_length} tokens, leaving no answer to compare; raise it")
    method = f"KTO (beta {recipe.prefer.beta})" if kto else f"DPO ({recipe.prefer.loss_type}, beta {recipe.prefer.beta})"
    print(f"kit.prefer: {method} on {len(trainer.train_dataset)} {what}", flush=True)
    with stop_on_interrupt(guard, "prefer"):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if guard.interrupted:
        print(f"kit.prefer: interrupted at step {trainer.state.global_step}; checkpoint saved in {checkpoints}; "
              "continue with: python -m kit.prefer <recipe> --resume", flush=True)
        raise KeyboardInterrupt
    metrics = {**result.metrics, "global_step": trainer.state.global_step}
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    if not all(math.isfinite(v) for k, v in metrics.items() if k.endswith("loss") and isinstance(v, float)):
        raise KitError("prefer.learning_rate: preference tuning ended with a non-finite loss; lower the learning rate")

    target = recipe.run_dir / "preferred"
    with atomic_dir(target) as scratch:
        # Only the trained adapter: TRL's frozen copy of the SFT adapter ("ref") stays behind.
        trainer.model.save_pretrained(scratch, selected_adapters=["default"])
        tokenizer.save_pretrained(scratch)
        write_json(scratch / "manifest.json", {
            "stage": "prefer",
            "method": recipe.prefer.method,
            "base": base,
            "pairs": {**counts, "total": len(pairs)},
            "rows": len(rows),  # what the trainer got: pairs (DPO), or single answers (KTO)
            "recipe": recipe.model_dump(mode="json"),
            "versions": package_versions(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "train_metrics": metrics,
            "log_history": history,
            "wall_seconds": round(time.time() - started, 1),
        })
    shutil.rmtree(checkpoints, ignore_errors=True)  # the adapter is written: nothing left to resume
    print(f"kit.prefer: preferred adapter {target} ({len(rows)} {what}, {time.time() - started:.0f}s)", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.prefer", "Preference-tune the tuned model on votes and its own mistakes (DPO or KTO).")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in <run>/prefer_checkpoints (after Ctrl-C or a crash)")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides), resume=args.resume))


if __name__ == "__main__":
    main()
