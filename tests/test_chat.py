import io
import json
import os
import socket

import pytest

from kit import chat, models, prefer, sft
from kit.feedback import PREFERENCES, feedback_dir, load_feedback, record_vote
from kit.recipe import load_recipe
from kit.runs import preferred_adapter, student_dir
from tests.conftest import build_tiny_model


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, read from the kernel (no traffic sent)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


def add_student(recipe) -> None:
    """What kit.distill leaves behind: a plain model folder, manifest.json written last."""
    folder = recipe.run_dir / "student"
    build_tiny_model(folder, seed=7, num_layers=1)
    (folder / "manifest.json").write_text("{}")
    assert student_dir(recipe) == folder


def add_preferred(recipe) -> None:
    """What kit.prefer leaves behind: a LoRA adapter on the base model (random, so it answers differently) with
    its tokenizer, the manifest written last."""
    from peft import LoraConfig, get_peft_model

    folder = recipe.run_dir / "preferred"
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(models.load_model(recipe.model), config).save_pretrained(folder)
    models.load_tokenizer(recipe.model).save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps({"stage": "prefer", "base": {"tuned_model": None}}))
    assert preferred_adapter(recipe) == folder


@pytest.fixture
def trained_recipe(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=2"])
    sft.run(recipe)
    return recipe


@pytest.fixture
def student_recipe(tiny_recipe):
    """base + student, no training: the cheapest run with two models to compare."""
    recipe = load_recipe(tiny_recipe())
    add_student(recipe)
    return recipe


def turn(answers: dict[str, str], question: str = "where is my order") -> dict:
    prompt = [{"role": "system", "content": "You are a support assistant."}, {"role": "user", "content": question}]
    return {"conversations": {name: prompt for name in answers}, "answers": answers}


def test_stream_answers_streams_every_model_at_once_with_stats(trained_recipe):
    add_student(trained_recipe)
    loaded = chat.load_models(trained_recipe)
    assert list(loaded) == ["base", "tuned", "student"]
    question = [{"role": "user", "content": "where is my order"}]
    states = list(chat.stream_answers({name: (m, question) for name, m in loaded.items()}, 12, 0.0))
    final = states[-1]
    for name, (text, stats) in final.items():
        assert stats is not None and not stats.get("failed"), (name, text)
        assert 1 <= stats["tokens"] <= 12 and stats["tokens_per_s"] > 0 and 0 <= stats["first_token_s"] <= stats["seconds"]
        assert "tokens/s" in chat.stats_line(stats)
    partial = [s for s in states[:-1] if any(stats is None and text for text, stats in s.values())]
    assert partial, "no update carried part of an answer: the answers were not streamed"
    # The tuned model is the base with a trained adapter merged in: same question, different weights.
    assert not all(p.equal(q) for p, q in zip(loaded["base"].model.parameters(), loaded["tuned"].model.parameters()))


def test_generation_stops_when_the_request_goes_away(student_recipe):
    import threading

    import torch
    from transformers import StoppingCriteriaList

    model = chat.load_models(student_recipe)["base"]
    inputs = model.tokenizer("where is my order", return_tensors="pt")
    gone = threading.Event()
    gone.set()
    out = model.model.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                               eos_token_id=None, stopping_criteria=StoppingCriteriaList([chat.stop_when(gone)]))
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1  # one token, not 20
    with torch.no_grad():
        still = threading.Event()
        out = model.model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=None,
                                   pad_token_id=model.tokenizer.pad_token_id,
                                   stopping_criteria=StoppingCriteriaList([chat.stop_when(still)]))
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_long_conversations_drop_the_oldest_exchanges_to_fit(student_recipe):
    model = chat.load_models(student_recipe)["base"]
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} about my order"}, {"role": "assistant", "content": "x " * 20}]
    turns = chat.conversation("You are a support assistant.", history, "where is my order")
    prompt, dropped = chat.fit_prompt(model, turns, max_new_tokens=64)
    assert dropped > 0
    assert prompt.startswith("<|im_start|>system\nYou are a support assistant.")  # the system prompt stays
    assert "where is my order" in prompt and "question 0 about" not in prompt
    assert len(model.tokenizer(prompt)["input_ids"]) + 64 <= model.model.config.max_position_embeddings


def test_votes_are_trl_preference_rows_that_survive_restarts_and_corrupt_lines(tiny_recipe, tiny_model_dir):
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    recipe = load_recipe(tiny_recipe())
    answers = {"base": "no idea", "tuned": "Hi there, standard shipping takes 3-5 business days.", "student": "no idea"}
    saved = record_vote(recipe, turn(answers), "tuned", blind=True, source="test")
    assert saved["rows"] == 2 and saved["identical"] == 0
    path = recipe.run_dir / "feedback" / "preferences.jsonl"
    assert saved["file"] == path

    # TRL reads it as a conversational preference dataset (prompt, chosen, rejected).
    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(rows.column_names) and len(rows) == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in rows:
        assert is_conversational(row)
        rendered = apply_chat_template(row, tokenizer)
        assert rendered["chosen"].startswith("Hi there, standard shipping") and rendered["rejected"].startswith("no idea")
        assert rendered["prompt"].endswith("<|im_start|>assistant\n")
    assert {r["metadata"]["rejected_model"] for r in rows} == {"base", "student"}

    # A crash mid-write leaves half a line; the next vote still lands on its own line.
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": [{"role": "user", "content": "cut sh')
    record_vote(recipe, turn({"base": "a", "tuned": "b"}, "can i return a lamp"), "base", blind=False, source="test")
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "not messages", "chosen": [], "rejected": []}\n\n')

    # "Restart": nothing but the files is shared with the earlier calls.
    feedback = load_feedback(load_recipe(tiny_recipe()))
    assert feedback.corrupt == ["preferences.jsonl:3", "preferences.jsonl:5"]
    assert feedback.pairs == 3 and feedback.votes == 2
    assert feedback.best == {"tuned": 1, "base": 1}
    assert feedback.summary(["base", "tuned", "student"]).startswith("2 votes so far · best answer: base 1, tuned 1, student 0")
    assert "2 corrupt line(s) skipped" in feedback.summary(["base"], per_model=False)
    assert "best answer" not in feedback.summary(["base"], per_model=False)


def test_preferences_file_trains_dpo_as_written(tiny_recipe, tiny_model_dir, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    recipe = load_recipe(tiny_recipe())
    record_vote(recipe, turn({"base": "no idea", "tuned": "Hi there, it ships in 3-5 days."}), "tuned",
                     blind=True, source="test")
    record_vote(recipe, turn({"base": "Hi there, use Forgot password.", "tuned": "??"}, "reset password"), "base",
                     blind=True, source="test")
    rows = datasets.load_dataset("json", data_files=str(recipe.run_dir / "feedback" / "preferences.jsonl"), split="train")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                       report_to="none", use_cpu=True, save_strategy="no", seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=rows,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    loss = trainer.train().training_loss
    assert loss == pytest.approx(0.6931, abs=1e-3)  # ln 2: before the first update the policy equals the reference
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert changed, "DPO on the votes changed no parameter"


def test_all_bad_votes_and_ties(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    saved = record_vote(recipe, turn({"base": "same", "tuned": "same ", "student": "other"}), "base",
                             blind=False, source="test")
    assert saved["rows"] == 1 and saved["identical"] == 1  # base vs tuned teaches nothing: not written
    saved = record_vote(recipe, turn({"base": "x", "tuned": "y"}), None, blind=True, source="test")
    assert saved["rows"] == 2 and saved["file"].name == "all_bad.jsonl"
    lines = [json.loads(line) for line in saved["file"].read_text().splitlines()]
    assert {line["metadata"]["model"] for line in lines} == {"base", "tuned"}
    assert all(line["label"] is False and line["completion"][0]["role"] == "assistant" for line in lines)
    feedback = load_feedback(recipe)
    assert (feedback.votes, feedback.all_bad, feedback.pairs, feedback.corrupt) == (2, 1, 1, [])
    with pytest.raises(chat.KitError, match="did not answer"):
        record_vote(recipe, turn({"base": "x"}), "tuned", blind=False, source="test")


def test_app_serves_on_loopback_and_answers_through_gradio_client(student_recipe):
    from gradio_client import Client

    app = chat.run(student_recipe, block=False)
    try:
        assert app.server_name == "127.0.0.1" and not app.share
        client = Client(app.local_url, verbose=False)
        answers = client.predict("where is my order", api_name="/compare")
        assert set(answers) == {"base", "student"}
        assert all(isinstance(text, str) and text.strip() for text in answers.values())
        with pytest.raises(Exception, match="too long"):
            client.predict("x" * (student_recipe.chat.max_input_chars + 1), api_name="/compare")
        if os.path.exists("/proc/net/tcp"):  # Linux: read the bound address straight from the kernel
            assert listening_addresses(app.server_port) == {"127.0.0.1"}  # not 0.0.0.0: unreachable from outside
    finally:
        app.close()


def test_auth_keeps_out_clients_without_the_password(student_recipe):
    import httpx
    from gradio_client import Client

    app = chat.run(student_recipe, block=False, auth=("agent", "s3cret"))
    try:
        assert httpx.get(app.local_url + "config").status_code == 401
        with pytest.raises(Exception):
            Client(app.local_url, verbose=False)
        with pytest.raises(Exception):
            Client(app.local_url, auth=("agent", "wrong"), verbose=False)
        client = Client(app.local_url, auth=("agent", "s3cret"), verbose=False)
        assert set(client.predict("where is my order", api_name="/compare")) == {"base", "student"}
    finally:
        app.close()


def test_cli_options(student_recipe, tmp_path, capsys, monkeypatch):
    assert chat.parse_auth("agent:pa:ss") == ("agent", "pa:ss")
    for bad in ("agent", ":pw", "agent:"):
        with pytest.raises(chat.KitError, match="user:password"):
            chat.parse_auth(bad)
    recipe_path = tmp_path / "recipe.yaml"
    with pytest.raises(SystemExit) as exit_info:
        chat.main([str(recipe_path), "--auth", "nopassword", "--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --auth: write it as user:password (both parts non-empty)"
    with pytest.raises(SystemExit) as exit_info:
        chat.main([str(recipe_path), "--port", "70000"])
    assert exit_info.value.code == 2 and "chat.port" in capsys.readouterr().err

    # --cli --blind: the terminal comparison, names hidden.
    monkeypatch.setattr("sys.stdin", io.StringIO("where is my order\nx\n/quit\n"))
    chat.main([str(recipe_path), "--cli", "--blind"])
    out = capsys.readouterr().out
    assert "[A] " in out and "[B] " in out and "[base]" not in out and "1 vote so far" in out


def test_terminal_compares_streams_and_votes(student_recipe):
    recipe = student_recipe.model_copy(update={"chat": student_recipe.chat.model_copy(update={"blind": True})})
    typed = "where is my order\nB\nhow do i reset my password\nx\nis there a warranty\n\n/new\n/quit\n"
    out = io.StringIO()
    feedback = chat.run_terminal(recipe, io.StringIO(typed), out)
    text = out.getvalue()
    assert text.count("[A] ") == 3 and text.count("[B] ") == 3 and "[base]" not in text
    assert text.count("tokens/s") == 6
    assert "Last conversation: A = " in text  # /new reveals who was who
    assert (feedback.votes, feedback.all_bad, feedback.pairs) == (2, 1, 1)
    row = json.loads((recipe.run_dir / "feedback" / "preferences.jsonl").read_text())
    assert row["prompt"][-1] == {"role": "user", "content": "where is my order"}
    assert row["metadata"]["source"] == "cli" and row["metadata"]["blind"] is True


def test_the_preferred_model_is_a_pane_and_votes_on_it_train_the_next_prefer_run(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["chat.blind=true", "chat.max_new_tokens=12"])
    add_preferred(recipe)
    loaded = chat.load_models(recipe)
    assert list(loaded) == ["base", "preferred"]
    assert not all(p.equal(q) for p, q in zip(loaded["base"].model.parameters(), loaded["preferred"].model.parameters()))
    out = io.StringIO()
    chat.run_terminal(recipe, io.StringIO("where is my order\nA\n/new\n/quit\n"), out, loaded=loaded)
    shown = out.getvalue().split("Last conversation: ")[1].splitlines()[0]  # "A = preferred, B = base" or the reverse
    best = dict(pair.split(" = ") for pair in shown.split(", "))["A"]
    votes = prefer.load_votes(feedback_dir(recipe) / PREFERENCES)
    assert votes.corrupt == [] and len(votes.pairs) == 1, out.getvalue()
    [pair] = votes.pairs
    assert pair.prompt[-1] == {"role": "user", "content": "where is my order"}
    row = json.loads((feedback_dir(recipe) / PREFERENCES).read_text())
    assert {row["metadata"]["chosen_model"], row["metadata"]["rejected_model"]} == {"base", "preferred"}
    assert row["metadata"]["chosen_model"] == best and pair.chosen != pair.rejected


def test_model_promoted_chats_with_the_model_the_gate_promoted(tiny_recipe, capsys, monkeypatch):
    from tests.test_runs import TUNED, write_gate

    path = tiny_recipe()
    recipe = load_recipe(path)
    add_preferred(recipe)
    write_gate(recipe, {**TUNED, "similarity": 0.6})
    monkeypatch.setattr("sys.stdin", io.StringIO("where is my order\n\n/quit\n"))
    chat.main([str(path), "--cli", "--model", "promoted"])
    out = capsys.readouterr().out
    assert "kit.chat: using preferred: kit.eval's gate promoted it over tuned" in out
    assert "[preferred] " in out and "[base]" not in out

    write_gate(recipe, {**TUNED, "fact_recall": 0.2})  # refused: tuned, which this run has not trained
    with pytest.raises(SystemExit) as exit_info:
        chat.main([str(path), "--cli", "--model", "promoted"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "kit.chat: using tuned: kit.eval's gate refused preferred (fact recall dropped: 0.200 < 0.400" in captured.out
    assert captured.err.strip() == (f"error: --model: tuned: no tuned model in {recipe.run_dir}; run `python -m kit.sft "
                                    "<recipe>` first")


def test_votes_are_redacted_like_the_dataset(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["data.pii.allowlist=[help@brightloop.example]"])
    question = "I'm jane.doe@example.com, call +44 20 7946 0958, card 4111 1111 1111 1111"
    answers = {"base": "Write to help@brightloop.example", "tuned": "We will email jane.doe@example.com today."}
    record_vote(recipe, turn(answers, question), "tuned", blind=True, source="test")
    record_vote(recipe, turn(answers, question), None, blind=True, source="test")
    text = "".join(p.read_text() for p in (recipe.run_dir / "feedback").glob("*.jsonl"))
    for secret in ("jane.doe@example.com", "7946 0958", "4111 1111"):
        assert secret not in text
    assert "{{EMAIL}}" in text and "{{PHONE}}" in text and "{{CARD}}" in text
    assert "help@brightloop.example" in text  # the allowlisted company address stays

    unredacted = load_recipe(tiny_recipe(), ["data.pii.enabled=false", "output_dir=" + str(recipe.run_dir / "off")])
    record_vote(unredacted, turn(answers, question), "tuned", blind=True, source="test")
    assert "jane.doe@example.com" in (unredacted.run_dir / "feedback" / "preferences.jsonl").read_text()
