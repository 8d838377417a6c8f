import pytest
from transformers import AutoTokenizer

from kit.masking import CHATML_TEMPLATE, ensure_chat_template, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "where is my order"},
    {"role": "assistant", "content": "Hi there, it ships in 3-5 business days."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "Hi there, happy to help."},
]


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tokenizer, encoded):
    return tokenizer.decode([t for t, m in zip(encoded["input_ids"], encoded["completion_mask"]) if m])


def test_only_assistant_turns_and_their_end_token_are_trained(tokenizer):
    encoded = tokenize_conversation(tokenizer, CONVERSATION)
    assert trained_text(tokenizer, encoded) == "Hi there, it ships in 3-5 business days.<|im_end|>Hi there, happy to help.<|im_end|>"
    ends = [i for i, t in enumerate(encoded["input_ids"]) if t == tokenizer.eos_token_id]
    trained_ends = [i for i in ends if encoded["completion_mask"][i]]
    assert len(ends) == 5 and len(trained_ends) == 2  # system/user ends are context, assistant ends are learned
    assert not encoded["truncated"]


def test_template_that_rewrites_history_falls_back_to_content_search(tokenizer):
    # A template that marks earlier assistant turns differently from the last one (as reasoning templates
    # do when they strip old thoughts): rendered prefixes no longer line up with the full conversation.
    tokenizer.chat_template = (
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n'}}"
        "{% if m['role'] == 'assistant' and not loop.last %}{{'(earlier) '}}{% endif %}"
        "{{m['content'] + '<|im_end|>\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
    )
    encoded = tokenize_conversation(tokenizer, CONVERSATION)
    assert "(earlier) " in tokenizer.decode(encoded["input_ids"])
    assert trained_text(tokenizer, encoded) == "Hi there, it ships in 3-5 business days.<|im_end|>Hi there, happy to help.<|im_end|>"


def test_turn_missing_from_the_rendering_is_not_trained(tokenizer):
    tokenizer.chat_template = (  # drops every assistant turn but the last
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
    )
    encoded = tokenize_conversation(tokenizer, CONVERSATION)
    assert trained_text(tokenizer, encoded) == "Hi there, happy to help.<|im_end|>"


def test_truncation_is_reported(tokenizer):
    encoded = tokenize_conversation(tokenizer, CONVERSATION, max_length=10)
    assert encoded["truncated"] and len(encoded["input_ids"]) == 10 and sum(encoded["completion_mask"]) == 0


def test_chatml_fallback_for_models_without_template(tokenizer, capsys):
    tokenizer.chat_template = None
    ensure_chat_template(tokenizer)
    assert tokenizer.chat_template == CHATML_TEMPLATE and "chatml" in capsys.readouterr().out


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# TRL-style template with {% generation %} markers (kit ignores them and must agree with them).
MARKED_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' %}{% generation %}"
    "{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("style", ["chatml", "llama3", "generation_markers"])
def test_exact_trained_token_ids_per_template_style(tiny_model_dir, style):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    end = "<|im_end|>"
    if style == "llama3":
        tokenizer.add_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
        tokenizer.bos_token = "<|begin_of_text|>"
        tokenizer.chat_template = LLAMA3_TEMPLATE
        end = "<|eot_id|>"
    elif style == "generation_markers":
        tokenizer.chat_template = MARKED_TEMPLATE
    encoded = tokenize_conversation(tokenizer, CONVERSATION)
    end_id = tokenizer.convert_tokens_to_ids(end)
    expected = []
    for message in CONVERSATION:
        if message["role"] == "assistant":
            expected += tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [end_id]
    trained = [t for t, m in zip(encoded["input_ids"], encoded["completion_mask"]) if m]
    assert trained == expected
    if style == "generation_markers":  # the template's own assistant mask agrees with kit's
        rendered = tokenizer.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
        assert rendered["input_ids"] == encoded["input_ids"]
        assert rendered["assistant_masks"] == encoded["completion_mask"]
