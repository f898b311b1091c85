"""The training templates render exactly what the models' own templates render, and mask only the answers."""

from __future__ import annotations

import json

import pytest
from helpers import DATA

from trainer.train.model import ModelError
from trainer.train.templates import PROBE_CONVERSATIONS, select_training_template, verify_training_template


def sample_conversations() -> list[list[dict[str, str]]]:
    convs = []
    for line in (DATA / "studyabroadgpt_sample.jsonl").read_text(encoding="utf-8").splitlines():
        turns = json.loads(line)["conversations"]
        convs.append([{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                      for t in turns])
    for line in (DATA / "short_dialogues.jsonl").read_text(encoding="utf-8").splitlines():
        convs.append(json.loads(line)["messages"])
    edge = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "  padded question  "}, {"role": "assistant", "content": "\n answer \n"}],
        [{"role": "user", "content": "Ünïcödé: 東京大学? — ok"}, {"role": "assistant", "content": "はい。✓"}],
    ]
    return convs + edge


CONVERSATIONS = sample_conversations()


def _prompts(conv):
    """The conversation itself, and each prefix a server would render to generate the next answer."""
    yield conv, False
    for i, m in enumerate(conv):
        if m["role"] == "assistant":
            yield conv[:i], True


@pytest.mark.parametrize("fixture", ["mistral_tokenizer", "demo_tokenizer"])
def test_training_template_renders_the_same_text_and_tokens_as_the_models_own(fixture, request):
    tokenizer = request.getfixturevalue(fixture)
    template = select_training_template(tokenizer, "auto")
    assert template.family == ("mistral" if fixture == "mistral_tokenizer" else "chatml")
    compared = 0
    for conv in CONVERSATIONS:
        for messages, gen in _prompts(conv):
            own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ours = tokenizer.apply_chat_template(messages, chat_template=template.text, tokenize=False,
                                                 add_generation_prompt=gen)
            assert ours == own
            assert tokenizer(ours, add_special_tokens=False)["input_ids"] == \
                tokenizer(own, add_special_tokens=False)["input_ids"]
            compared += 1
    assert compared > 60
    assert verify_training_template(tokenizer, template, CONVERSATIONS) > compared


def test_chatml_twin_keeps_smollm2s_default_system_prompt(demo_tokenizer):
    template = select_training_template(demo_tokenizer, "auto")
    text = demo_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], chat_template=template.text,
                                              tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def _masked_spans(tokenizer, template, messages):
    out = tokenizer.apply_chat_template(messages, chat_template=template.text, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    spans, current = [], []
    for token, masked in zip(out["input_ids"], out["assistant_masks"]):
        if masked:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def test_mistral_mask_covers_each_answer_and_its_eos_only(mistral_tokenizer):
    template = select_training_template(mistral_tokenizer)
    conv = list(PROBE_CONVERSATIONS[1])
    spans = _masked_spans(mistral_tokenizer, template, conv)
    answers = [m["content"].strip() for m in conv if m["role"] == "assistant"]
    assert len(spans) == len(answers)
    for span, answer in zip(spans, answers):
        assert span.strip() == answer + "</s>"
    assert not any("[INST]" in s or "Germany" in s for s in spans)


def test_chatml_mask_covers_each_answer_and_its_end_token_only(demo_tokenizer):
    template = select_training_template(demo_tokenizer)
    conv = [{"role": "system", "content": "Counsellor."}, {"role": "user", "content": "Visa?"},
            {"role": "assistant", "content": "Apply online."}, {"role": "user", "content": "Cost?"},
            {"role": "assistant", "content": "Check the fee page."}]
    spans = _masked_spans(demo_tokenizer, template, conv)
    assert spans == ["Apply online.<|im_end|>", "Check the fee page.<|im_end|>"]


def test_trl_accepts_the_templates_as_training_ready(mistral_tokenizer, demo_tokenizer):
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    for tokenizer in (mistral_tokenizer, demo_tokenizer):
        template = select_training_template(tokenizer)
        assert is_chat_template_stop_token_trained(tokenizer, chat_template=template.text)
        original = tokenizer.chat_template
        try:
            tokenizer.chat_template = template.text
            assert get_training_chat_template(tokenizer) is None  # TRL would not swap it for another
        finally:
            tokenizer.chat_template = original


def test_a_template_that_renders_differently_is_refused(mistral_tokenizer):
    template = select_training_template(mistral_tokenizer, "chatml")
    with pytest.raises(ModelError, match="renders differently from the model.s own template at character 1: model .<s>\\[INST\\]"):
        verify_training_template(mistral_tokenizer, template)


def test_a_custom_template_needs_generation_markers(tmp_path, mistral_tokenizer):
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")
    with pytest.raises(ModelError, match="no {% generation %} markers"):
        select_training_template(mistral_tokenizer, str(path))


def test_a_model_without_a_known_template_gets_a_clear_error(mistral_tokenizer):
    original = mistral_tokenizer.chat_template
    try:
        mistral_tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        with pytest.raises(ModelError, match="set model.chat_template to a .jinja file"):
            select_training_template(mistral_tokenizer, "auto")
    finally:
        mistral_tokenizer.chat_template = original


def test_trl_labels_only_assistant_tokens(tiny_mistral_dir, mistral_tokenizer, tmp_path):
    """Through TRL's own dataset preparation and collator: every label outside the answers is -100."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    template = select_training_template(mistral_tokenizer)
    mistral_tokenizer.chat_template = template.text
    conv = list(PROBE_CONVERSATIONS[1])
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, report_to="none", use_cpu=True,
                     bf16=False, max_length=512, activation_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, processing_class=mistral_tokenizer,
                         train_dataset=datasets.Dataset.from_list([{"messages": conv}]))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = mistral_tokenizer.decode([t for t, l in zip(ids, labels) if l != -100])
    untrained = mistral_tokenizer.decode([t for t, l in zip(ids, labels) if l == -100])
    for m in conv:
        if m["role"] == "assistant":
            assert m["content"].strip() in trained
        else:
            assert m["content"] not in trained
    assert trained.count("</s>") == 2
    assert "[INST]" in untrained and "[INST]" not in trained
