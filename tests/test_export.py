import functools
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit import export, models, sft
from kit.errors import KitError
from kit.recipe import load_recipe

from tests.conftest import QA_ROWS, build_tiny_model, write_qa_csv

# ------------------------------------------------------------------------------------------------
# A small interpreter for the part of Go's text/template that Ollama TEMPLATEs use (range, if/else if,
# eq/ne/and/or/not/len, fields, variables, string literals, trim markers), written from the Go docs,
# so the Modelfile is checked by executing it rather than by re-reading kit's own layout.

_GO_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|`[^`]*`|:=|,|[^\s(),]+)')


def _go_actions(template: str):
    """Yield ("text", str) and ("action", str) pieces, applying `{{-` and `-}}` trim markers."""
    pieces, i = [], 0
    while True:
        start = template.find("{{", i)
        if start < 0:
            pieces.append(["text", template[i:]])
            break
        pieces.append(["text", template[i:start]])
        j, quote = start + 2, None
        while True:  # find the closing braces outside string literals
            char = template[j]
            if quote:
                if char == "\\" and quote == '"':
                    j += 1
                elif char == quote:
                    quote = None
            elif char in "\"`":
                quote = char
            elif template.startswith("}}", j):
                break
            j += 1
        body = template[start + 2 : j]
        if body.startswith("- "):
            pieces[-1][1] = pieces[-1][1].rstrip()
            body = body[2:]
        trim_right = body.endswith(" -")
        if trim_right:
            body = body[:-2]
        pieces.append(["action", body.strip()])
        i = j + 2
        if trim_right:
            while i < len(template) and template[i].isspace():
                i += 1
    return pieces


def _go_parse(pieces, position=0, stop=("end",)):
    """-> (nodes, position, the keyword that ended this list)."""
    nodes = []
    while position < len(pieces):
        kind, body = pieces[position]
        position += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            if word not in stop and not (word == "else" and "else" in stop):
                raise SyntaxError(f"unexpected {{{{{body}}}}}")
            return nodes, position, body
        if word == "if":
            branches, else_nodes, condition = [], [], body[2:].strip()
            while True:
                inner, position, ended = _go_parse(pieces, position, ("end", "else"))
                branches.append((condition, inner))
                if ended == "end":
                    break
                if ended.startswith("else if "):
                    condition = ended[len("else if ") :].strip()
                    continue
                else_nodes, position, _ = _go_parse(pieces, position, ("end",))
                break
            nodes.append(("if", branches, else_nodes))
        elif word == "range":
            header = body[len("range") :].strip()
            names, _, pipe = header.rpartition(":=")
            variables = [name.strip() for name in names.split(",")] if names else []
            inner, position, ended = _go_parse(pieces, position, ("end", "else"))
            else_nodes = []
            if ended == "else":
                else_nodes, position, _ = _go_parse(pieces, position, ("end",))
            nodes.append(("range", variables, pipe.strip(), inner, else_nodes))
        else:
            nodes.append(("print", body))
    return nodes, position, None


def _go_truth(value) -> bool:
    return bool(value)  # Go: false, 0, nil and empty strings/slices/maps are false, like Python


def _go_field(value, names):
    for name in names:
        value = value.get(name, "") if isinstance(value, dict) else getattr(value, name, "")
    return value


def _go_eval(tokens, scope):
    """Evaluate a command (a list of tokens), Go style: `fn arg...` or a single operand."""
    functions = {
        "eq": lambda a, *rest: any(a == b for b in rest),
        "ne": lambda a, b: a != b,
        "and": lambda *values: next((v for v in values if not _go_truth(v)), values[-1]),
        "or": lambda *values: next((v for v in values if _go_truth(v)), values[-1]),
        "not": lambda value: not _go_truth(value),
        "len": len,
        "index": lambda value, *keys: functools.reduce(lambda inner, key: inner[key], keys, value),
        "slice": lambda value, *bounds: value[slice(*bounds)] if len(bounds) > 1 else value[bounds[0]:] if bounds else value,
    }

    def operands(items):
        values, k = [], 0
        while k < len(items):
            token = items[k]
            if token == "(":
                depth, end = 1, k + 1
                while depth:
                    depth += {"(": 1, ")": -1}.get(items[end], 0)
                    end += 1
                value = _go_eval(items[k + 1 : end - 1], scope)
                if end < len(items) and items[end].startswith("."):  # (pipeline).Field
                    value = _go_field(value, [n for n in items[end].split(".") if n])
                    end += 1
                values.append(value)
                k = end
                continue
            if token.startswith('"'):
                values.append(json.loads(token))
            elif token.startswith("`"):
                values.append(token[1:-1])
            elif re.fullmatch(r"-?\d+", token):
                values.append(int(token))
            elif token in ("true", "false"):
                values.append(token == "true")
            elif token.startswith("$"):
                name, _, rest = token.partition(".")
                values.append(_go_field(scope["vars"][name], rest.split(".") if rest else []))
            elif token.startswith("."):
                values.append(_go_field(scope["dot"], [n for n in token.split(".") if n]))
            elif token in functions:
                values.append(functions[token])
            else:
                raise SyntaxError(f"unknown token {token!r}")
            k += 1
        return values

    values = operands(tokens)
    if values and callable(values[0]):
        return values[0](*values[1:])
    assert len(values) == 1, tokens
    return values[0]


def _go_run(nodes, scope, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            value = _go_eval(_GO_TOKEN.findall(node[1]), scope)
            out.append("" if value is None else str(value))
        elif node[0] == "if":
            for condition, inner in node[1]:
                if _go_truth(_go_eval(_GO_TOKEN.findall(condition), scope)):
                    _go_run(inner, scope, out)
                    break
            else:
                _go_run(node[2], scope, out)
        else:  # range
            _, variables, pipe, inner, else_nodes = node
            items = _go_eval(_GO_TOKEN.findall(pipe), scope)
            if not items:
                _go_run(else_nodes, scope, out)
            for index, item in enumerate(items):
                names = dict(scope["vars"])
                if len(variables) == 2:
                    names[variables[0]], names[variables[1]] = index, item
                elif len(variables) == 1:
                    names[variables[0]] = item
                _go_run(inner, {"dot": item, "vars": names}, out)


def go_render(template: str, data: dict) -> str:
    """Execute a Go text/template (the subset above) with `data` as dot, as Ollama does."""
    nodes, position, ended = _go_parse(_go_actions(template), 0, ())
    assert ended is None
    out: list[str] = []
    _go_run(nodes, {"dot": data, "vars": {"$": data}}, out)
    return "".join(out)


def modelfile_template(modelfile: str) -> str:
    """The TEMPLATE \"\"\"...\"\"\" of a Modelfile."""
    match = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, flags=re.S | re.M)
    assert match, modelfile
    return match.group(1)


def ollama_values(messages: list[dict]) -> dict:
    """What Ollama hands the template: `.Messages` (Role, Content) and `.System` (all system texts)."""
    return {
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
        "System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
    }


def test_go_render_follows_go_semantics_of_slice_and_fields():
    values = ollama_values([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    assert go_render('{{ len (slice .Messages 1) }}{{ (index .Messages 0).Role }}{{ (index $.Messages 1).Content }}', values) == "1systemu"


def test_go_render_follows_go_semantics():
    template = '{{- range $i, $m := .Messages }}{{ if and (eq $i 0) (ne $m.Role "system") }}[first]{{ end }}' \
               '{{ if eq $m.Role "user" }}U:{{ $m.Content }}\n{{ else if eq .Role "assistant" }}A:{{ .Content }}' \
               '{{ else }}S:{{ $.System }}{{ end }}{{ end }}   \n{{- "{{x}}" }} {{ len .Messages }}'
    assert go_render(template, ollama_values([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])) == (
        "[first]U:hi\nA:yo{{x}} 2"
    )
    assert go_render(template, ollama_values([{"role": "system", "content": "be kind"}])) == "S:be kind{{x}} 1"


# ------------------------------------------------------------------------------------------------

THREE_TURNS = [
    {"role": "system", "content": "You are Brightloop's support assistant."},
    {"role": "user", "content": "My order #4411 has not arrived."},
    {"role": "assistant", "content": "Sorry! Standard shipping takes 3-5 business days."},
    {"role": "user", "content": "It has been 9 days.\nStill nothing."},
    {"role": "assistant", "content": "Then send us the order number and we will trace it."},
    {"role": "user", "content": "It is {{4411}}, thanks"},
]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_STYLE_TEMPLATE = (
    "{{ '<|endoftext|>' }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_end|>\n\n' "
    "+ message['content'] | trim + '<|endoftext|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\n\n' }}{% endif %}"
)

# Llama-2 style: the system prompt goes inside the first user turn.
LLAMA2_STYLE_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}[INST] <<SYS>>{{ system }}<</SYS>> {{ message['content'] }} [/INST]"
    "{% else %}[INST] {{ message['content'] }} [/INST]{% endif %}{% else %} {{ message['content'] }}</s>{% endif %}"
    "{% endfor %}"
)

# Numbers each turn: no fixed text between messages expresses it.
NUMBERED_TEMPLATE = "{% for m in messages %}Turn {{ loop.index }} {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}Answer:"

# The families of issue 20's architectures, as their instruct models' tokenizer_config.json publish them (tool-call
# branches left out: kit trains on plain conversations). bos/eos are the tiny tokenizer's.
FAMILY_TEMPLATES = {
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
        "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral-v0.3": (
        "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
        "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
        "{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif %}{%- if message['role'] == 'user' %}{%- if loop.last and system_message is defined %}"
        "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}{%- else %}"
        "{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}"
        "{{- ' ' + message['content']|trim + eos_token}}{%- else %}"
        "{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}"
        "{%- endif %}{%- endfor %}"
    ),
    "qwen2.5": (
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
        "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
        "{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
        "or (message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
        "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
    ),
    "qwen3": (
        "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}"
        "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
        "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
        "{%- if ns.multi_step_tool and message.role == 'user' %}{%- set ns.multi_step_tool = false %}"
        "{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
        "{%- for message in messages %}{%- if message.content is string %}{%- set content = message.content %}"
        "{%- else %}{%- set content = '' %}{%- endif %}"
        "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
        "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
        "{%- if '</think>' in content %}{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
        "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
        "{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}"
        "{{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
        "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
    ),
    "gemma3": (
        "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- endif -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
        "{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
        "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}"
        "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
        "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- endif -%}{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
    ),
    "gemma2": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    "llama2-style": LLAMA2_STYLE_TEMPLATE,
}


@pytest.fixture
def tiny_tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("template", [None, SMOLLM2_TEMPLATE, LLAMA3_STYLE_TEMPLATE], ids=["chatml", "smollm2", "llama3-style"])
def test_modelfile_renders_the_chat_template_for_three_turns(tiny_tokenizer, template):
    if template:
        tiny_tokenizer.chat_template = template
    text = export.modelfile(tiny_tokenizer, "tiny-q8_0.gguf", None, 0.0, "tiny")
    go = modelfile_template(text)
    for messages in (THREE_TURNS, THREE_TURNS[1:], THREE_TURNS[1:2]):
        expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(go, ollama_values(messages)) == expected
    assert "FROM ./tiny-q8_0.gguf" in text and "SYSTEM" not in text
    assert 'PARAMETER stop "<|im_end|>"' in text or 'PARAMETER stop "<|endoftext|>"' in text


def test_modelfile_stop_and_system_come_from_training(tiny_tokenizer):
    text = export.modelfile(tiny_tokenizer, "x.gguf", "You are a support assistant.", 0.0, "x")
    assert 'SYSTEM """You are a support assistant."""' in text
    assert re.findall(r"^PARAMETER stop (.*)$", text, flags=re.M) == ['"<|im_end|>"']
    assert "PARAMETER temperature 0\n" in text


@pytest.mark.parametrize("family", list(FAMILY_TEMPLATES))
def test_modelfile_template_renders_each_familys_training_prompt(tiny_tokenizer, family):
    """Llama 3, Mistral, Qwen2.5, Qwen3, Gemma 2/3 and Phi-3 chat templates: the Modelfile's TEMPLATE, run by the
    Go template interpreter above on what Ollama hands it, writes exactly the prompt the template wrote in training."""
    tiny_tokenizer.chat_template = FAMILY_TEMPLATES[family]
    tiny_tokenizer.bos_token = "<|endoftext|>"  # Llama 3, Mistral and Gemma write one; the tiny tokenizer has none
    system = "You are a support assistant."
    text = export.modelfile(tiny_tokenizer, "x-Q4_K_M.gguf", system, 0.0, "x")
    go = modelfile_template(text)
    conversations = [THREE_TURNS[1:], THREE_TURNS[1:2], THREE_TURNS[1:4]]
    if family != "gemma2":  # Gemma 2's template refuses a system message; its Modelfile has no SYSTEM then
        conversations += [THREE_TURNS, THREE_TURNS[:2], THREE_TURNS[:4]]
        assert f'SYSTEM """{system}"""' in text
    else:
        assert "SYSTEM" not in text
    for messages in conversations:
        expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(go, ollama_values(messages)) == expected, (family, len(messages))
    stops = re.findall(r"^PARAMETER stop (.*)$", text, flags=re.M)
    assert stops and all(json.loads(stop) for stop in stops)


def test_modelfile_refuses_a_template_it_cannot_express(tiny_tokenizer):
    tiny_tokenizer.chat_template = NUMBERED_TEMPLATE
    with pytest.raises(KitError, match="write the Modelfile's TEMPLATE by hand"):
        export.modelfile(tiny_tokenizer, "x.gguf", None, 0.0, "x")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (apt-get install golang-go)")
def test_modelfile_template_runs_in_go_text_template(tiny_tokenizer, tmp_path):
    """The real engine: Go's text/template with Ollama's options and values, on every family's template."""
    cases = []
    tiny_tokenizer.bos_token = "<|endoftext|>"
    for family, template in FAMILY_TEMPLATES.items():
        tiny_tokenizer.chat_template = template
        go = modelfile_template(export.modelfile(tiny_tokenizer, "x.gguf", None, 0.0, "x"))
        for messages in (THREE_TURNS[1:], THREE_TURNS[1:2]) + (() if family == "gemma2" else (THREE_TURNS, THREE_TURNS[:2])):
            expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            cases.append({"template": go, "values": ollama_values(messages), "expected": expected, "family": family})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "main.go").write_text(
        'package main\nimport ("encoding/json"; "fmt"; "os"; "strings"; "text/template")\n'
        "func main() {\n"
        '  data, _ := os.ReadFile("cases.json")\n'
        "  var cases []map[string]any; json.Unmarshal(data, &cases)\n"
        "  for _, c := range cases {\n"
        '    t := template.Must(template.New("").Option("missingkey=zero").Parse(c["template"].(string)))\n'
        "    var out strings.Builder\n"
        '    if err := t.Execute(&out, c["values"]); err != nil { panic(err) }\n'
        '    if out.String() != c["expected"].(string) { fmt.Printf("MISMATCH %s: %q\\n", c["family"], out.String()) }\n'
        "  }\n"
        '  fmt.Println("done")\n}\n'
    )
    result = subprocess.run(["go", "run", "main.go"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off", "GOCACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n", result.stdout


# ------------------------------------------------------------------------------------------------


def held_out_recipe(tiny_recipe, tmp_path, *overrides):
    """The tiny recipe on 60 conversations, so 24 are held out (test + validation)."""
    rows = [(f"{q} (case {i})", a) for i in range(5) for q, a in QA_ROWS]
    csv_path = write_qa_csv(tmp_path / "qa60.csv", rows=rows)
    path = tiny_recipe(data={"sources": [{"path": str(csv_path), "template": "qa_csv"}]})
    return load_recipe(path, ["sft.max_steps=3", *overrides])


def held_out_prompts(recipe, tokenizer, count):
    from kit import data

    prompts = []
    for conversation in data.load_split(recipe, "test") + data.load_split(recipe, "validation"):
        messages = conversation["messages"][:-1]  # up to the last user turn
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True))
    assert len(prompts) >= count
    return prompts[:count]


def test_merged_equals_base_plus_adapter_on_20_held_out_prompts(tiny_recipe, tmp_path):
    recipe = held_out_recipe(tiny_recipe, tmp_path)
    sft.run(recipe)
    folder = export.run(recipe) / "merged"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    assert (folder / "generation_config.json").is_file() and (folder / "chat_template.jinja").is_file()
    assert json.loads((folder / "kit_export.json").read_text())["recipe"] == "tiny"
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # plain transformers, no PEFT
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    reference = models.load_model(recipe.model, adapter=recipe.run_dir / "adapter", dtype=torch.float32).eval()
    base = models.load_model(recipe.model, dtype=torch.float32).eval()
    differences, adapter_effect = [], []
    with torch.no_grad():
        for prompt in held_out_prompts(recipe, tokenizer, 20):
            logits = merged(**prompt).logits
            differences.append((logits - reference(**prompt).logits).abs().max().item())
            adapter_effect.append((logits - base(**prompt).logits).abs().max().item())
    assert max(differences) < 1e-4
    assert min(adapter_effect) > 1e-3  # the adapter is in the merged weights


def test_adapter_export_has_a_model_card(tiny_recipe, tmp_path):
    from peft import PeftModel

    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=2", "export.formats=[adapter]"])
    sft.run(recipe)
    metrics = {"split": "test", "models": {"base": {"rouge_l": 0.11, "samples": 3}, "tuned": {"rouge_l": 0.19, "samples": 3}}}
    (recipe.run_dir / "eval").mkdir(exist_ok=True)
    (recipe.run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    folder = export.run(recipe) / "adapter"
    assert not (recipe.run_dir / "export" / "merged").exists()
    card = (folder / "README.md").read_text()
    stats = json.loads((recipe.run_dir / "dataset" / "stats.json").read_text())
    assert "library_name: peft" in card and f"`{recipe.model.name}`" in card
    assert f"{stats['kept']} kept" in card and f"test {stats['splits']['test']}" in card
    assert "| tuned | 0.19 |" in card
    assert "learning_rate: 0.01" in card  # the resolved recipe
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["library_name"] == "peft" and front["license"] == "other"  # a local base model without a card
    assert "datasets" not in front and "lora" in front["tags"]
    [result] = front["model-index"][0]["results"]
    assert front["model-index"][0]["name"] == "tiny" and result["dataset"]["split"] == "test"
    assert result["metrics"] == [{"type": "rouge_l", "name": "rouge_l", "value": 0.19}]  # the tuned row only
    assert f"--lora-modules tiny=path/to/this/folder --max-lora-rank {recipe.sft.lora.r}" in card
    base = models.load_model(recipe.model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(folder))
    assert any("lora_A" in name for name, _ in tuned.named_parameters())


def test_merged_card_names_license_datasets_and_results(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=1", "export.formats=[merged]", "export.license=mit",
                                         "export.datasets=[bitext/customer-support]"])
    sft.run(recipe)
    (recipe.run_dir / "eval").mkdir(exist_ok=True)
    (recipe.run_dir / "eval" / "metrics.json").write_text(json.dumps({"split": "test", "models": {"tuned": {"bleu": 7.5, "samples": 2}}}))
    card = (export.run(recipe) / "merged" / "README.md").read_text()
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["library_name"] == "transformers" and front["license"] == "mit"
    assert front["datasets"] == ["bitext/customer-support"] and "lora" not in front["tags"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 7.5
    assert "AutoModelForCausalLM.from_pretrained" in card


def test_export_without_training_is_a_clear_error(tiny_recipe):
    with pytest.raises(KitError, match="run `python -m kit.sft`"):
        export.run(load_recipe(tiny_recipe()))


def test_cli_rejects_an_architecture_the_gguf_writer_lacks(tiny_recipe, tmp_path, tiny_model_dir, capsys, monkeypatch):
    """Without llama.cpp: exit 2 with one line per problem, before anything is written: here no training and a
    Qwen2 model, which only llama.cpp's converter writes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kit import gguf

    monkeypatch.setattr(gguf, "llama_cpp_version", lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    path = tiny_recipe(model={"name": str(tmp_path / "qwen")})
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(path), "--format", "gguf"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2
    assert "no complete tuned model" in lines[0]
    assert "architecture `qwen2`" in lines[1] and "pip install 'llama-cpp-python[server]==" in lines[1]
    assert not (load_recipe(path).run_dir / "export").exists()


def test_k_quants_without_llama_cpp_exit_2_saying_what_to_install(tiny_recipe, capsys, monkeypatch):
    from kit import gguf

    monkeypatch.setattr(gguf, "llama_cpp_version", lambda: None)
    path = tiny_recipe(export={"formats": ["gguf"], "gguf_types": ["q8_0", "Q4_K_M"]})
    sft.run(load_recipe(path))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(path)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: export.formats: gguf: GGUF types Q4_K_M are written by llama.cpp's quantizer: pip install")
    assert not (load_recipe(path).run_dir / "export").exists()


def test_cli_format_all_writes_every_format_for_tuned_and_student(tiny_recipe, tmp_path):
    recipe_path = tiny_recipe()
    recipe = load_recipe(recipe_path, ["sft.max_steps=2"])
    sft.run(recipe)
    student = build_tiny_model(recipe.run_dir / "student", seed=1, num_layers=1)
    (student / "manifest.json").write_text("{}")
    export.main([str(recipe_path), "--format", "all"])
    root = recipe.run_dir / "export"
    assert (root / "adapter" / "adapter_model.safetensors").is_file()
    assert (root / "merged" / "model.safetensors").is_file()
    assert sorted(p.name for p in (root / "gguf").iterdir()) == ["Modelfile", "README.md", "kit_export.json", "tiny-f16.gguf", "tiny-q8_0.gguf"]
    assert "FROM ./tiny-q8_0.gguf" in (root / "gguf" / "Modelfile").read_text()
    assert not (root / "student" / "adapter").exists()
    assert (root / "student" / "merged" / "model.safetensors").is_file()
    assert (root / "student" / "gguf" / "tiny-student-q8_0.gguf").is_file()
    assert AutoModelForCausalLM.from_pretrained(root / "student" / "merged").config.num_hidden_layers == 1
    umask = os.umask(0)
    os.umask(umask)
    for path in (root / "gguf", root / "gguf" / "tiny-q8_0.gguf", root / "merged" / "model.safetensors"):
        assert path.stat().st_mode & 0o444 == 0o444 & ~umask, path  # readable as the umask allows, not 0600


def test_full_fine_tune_exports_its_whole_weights(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=1", "sft.method=full", "export.formats=[adapter, merged]"])
    sft.run(recipe)
    root = export.run(recipe)
    assert not (root / "adapter").exists()
    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(recipe.run_dir / "model", dtype=torch.float32)
    for (name, a), (_, b) in zip(merged.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_promoted_model_is_exported_by_default_and_model_overrides_it(tiny_recipe, capsys):
    from tests.test_chat import add_preferred
    from tests.test_runs import TUNED, write_gate

    path = tiny_recipe(export={"formats": ["merged"]})
    recipe = load_recipe(path, ["sft.max_steps=1"])
    sft.run(recipe)
    add_preferred(recipe)
    root = recipe.run_dir / "export"

    write_gate(recipe, {**TUNED, "similarity": 0.59})  # no worse anywhere: promoted
    capsys.readouterr()
    export.run(recipe)
    assert "kit.export: using preferred: kit.eval's gate promoted it over tuned" in capsys.readouterr().out
    assert not (root / "merged").exists()
    folder = root / "preferred" / "merged"
    assert json.loads((folder / "kit_export.json").read_text())["model"] == "preferred"
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    reference = models.load_preferred(recipe, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(folder)("where is my order", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)  # kit.prefer's weights, merged
        assert not torch.allclose(merged(ids).logits, models.load_tuned(recipe, dtype=torch.float32)(ids).logits, atol=1e-3)

    write_gate(recipe, {**TUNED, "invented_contacts": 5})  # refused: the tuned model, and the failed check named
    export.run(recipe)
    assert ("kit.export: using tuned: kit.eval's gate refused preferred (invented contacts rose: 5 > 3 (allowed <= 3))"
            in capsys.readouterr().out)
    assert json.loads((root / "merged" / "kit_export.json").read_text())["model"] == "tuned"

    shutil.rmtree(root / "preferred")  # an explicit --model beats the gate, and says nothing about it
    export.main([str(path), "--model", "preferred"])
    assert "gate" not in capsys.readouterr().out
    assert json.loads((root / "preferred" / "merged" / "kit_export.json").read_text())["model"] == "preferred"
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(path), "--model", "student"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("no complete student in "
                                                    f"{recipe.run_dir}; run `python -m kit.distill` with this recipe first")


def test_gguf_card_says_why_q5_k_m_stores_narrow_rows_as_q5_0(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), [])
    with_q5 = export.gguf_card(recipe, "tiny", ["f16", "Q5_K_M"], "kit")
    assert "stored as Q5_0 rather than llama.cpp's own fallback, Q5_1" in with_q5
    assert "Q5_0" not in export.gguf_card(recipe, "tiny", ["f16", "Q4_K_M"], "kit")
