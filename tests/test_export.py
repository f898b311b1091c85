"""`python -m trainer export-feedback`: SFT / KTO / DPO rows from reviewed feedback, a card, and the loop back into
stage-2 training (and TRL's preference format)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers import REPO

from trainer.data.feedback import FeedbackRecord, FeedbackStore
from trainer.__main__ import main

SYSTEM = "You are a counsellor."


def dialogue(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question {n} about visas?"},
            {"role": "assistant", "content": f"Answer {n}: check the official site."},
            {"role": "user", "content": f"Follow-up {n}?"},
            {"role": "assistant", "content": f"Second answer {n}."}]


@pytest.fixture
def store_with_reviews(tmp_path):
    path = tmp_path / "fb.sqlite"
    store = FeedbackStore(path, jsonl_dir=tmp_path / "hub-jsonl")
    add = lambda n, **kw: store.add(FeedbackRecord(  # noqa: E731
        session_id=f"s{n}", base_model="smollm2-135m-instruct", adapter="demo/stage2", adapter_revision="sha256:ab",
        system_prompt=SYSTEM, messages=dialogue(n), consent=True,
        redactions={"email": n % 2, "phone": 0, "id_number": 0, "address": 0}, **kw))
    accepted_edit = add(1, ratings={1: 1, 3: -1})
    store.decide(accepted_edit, status="accepted", reviewer="ana", topic="visas", edits={3: "Corrected answer 1."})
    accepted_suggestion = add(2, edited_index=1, edited_answer="Suggested answer 2.")
    store.decide(accepted_suggestion, status="accepted", reviewer="ben")
    rejected = add(3, ratings={1: -1}, edited_index=3, edited_answer="Bad suggestion 3.")
    store.decide(rejected, status="rejected", reviewer="ana")
    unreviewed = add(4, ratings={3: 1}, edited_index=1, edited_answer="Suggested answer 4.")
    store.close()
    return path, {"accepted_edit": accepted_edit, "accepted_suggestion": accepted_suggestion, "rejected": rejected,
                  "unreviewed": unreviewed}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_sft_kto_dpo_rows_and_a_card(store_with_reviews, tmp_path):
    from huggingface_hub import DatasetCard

    path, ids = store_with_reviews
    out = tmp_path / "export"
    assert main(["export-feedback", "--store", str(path), "--out", str(out)]) == 0
    sft = read(out / "sft.jsonl")
    assert [r["id"] for r in sft] == [ids["accepted_edit"], ids["accepted_suggestion"]]
    assert sft[0]["messages"] == [{"role": "system", "content": SYSTEM}, *dialogue(1)[:3],
                                  {"role": "assistant", "content": "Corrected answer 1."}]
    assert sft[1]["messages"][2] == {"role": "assistant", "content": "Suggested answer 2."}

    kto = read(out / "kto.jsonl")
    assert [(r["id"], r["label"]) for r in kto] == [(f"{ids['accepted_edit']}:1", True),
                                                   (f"{ids['accepted_edit']}:3", False),
                                                   (f"{ids['unreviewed']}:3", True)]  # rejected records excluded
    assert kto[0]["prompt"] == [{"role": "system", "content": SYSTEM}, dialogue(1)[0]]
    assert kto[0]["completion"] == [dialogue(1)[1]]

    dpo = read(out / "dpo.jsonl")
    assert [(r["id"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo] == [
        (f"{ids['accepted_edit']}:3", "Corrected answer 1.", "Second answer 1."),
        (f"{ids['accepted_suggestion']}:1", "Suggested answer 2.", "Answer 2: check the official site."),
        (f"{ids['unreviewed']}:1", "Suggested answer 4.", "Answer 4: check the official site."),
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"records": 4, "accepted": 2, "rejected": 1, "unreviewed": 1, "sft": 2, "kto": 3,
                                  "kto_liked": 2, "dpo": 3}
    assert manifest["redactions"]["email"] == 2 and manifest["reviewers"] == 2
    card = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in card.data.to_dict()["configs"]] == ["sft", "kto", "dpo"]
    assert "ticked the consent box" in card.text and "`demo/stage2@sha256:ab`: 4 record(s)" in card.text
    assert "email 2" in card.text


def test_the_jsonl_copy_exports_the_same_rows(store_with_reviews, tmp_path):
    path, _ = store_with_reviews
    main(["export-feedback", "--store", str(path), "--out", str(tmp_path / "from-sqlite")])
    main(["export-feedback", "--store", str(path.parent / "hub-jsonl"), "--out", str(tmp_path / "from-jsonl")])
    for name in ("sft.jsonl", "kto.jsonl", "dpo.jsonl"):
        assert read(tmp_path / "from-sqlite" / name) == read(tmp_path / "from-jsonl" / name)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export-feedback", "--store", str(tmp_path / "nope.sqlite")]) == 2
    assert "nope.sqlite: no such feedback store or folder" in capsys.readouterr().err


def test_stage2_trains_on_the_export(store_with_reviews, short_demo_run, tmp_path):
    path, _ = store_with_reviews
    out = tmp_path / "export"
    main(["export-feedback", "--store", str(path), "--out", str(out)])
    code = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--stage", "stage2",
                 "--set", f"output_dir={tmp_path / 'runs'}", "--set", "max_length=512",
                 "--set", f"stages.stage2.dataset.path={out / 'sft.jsonl'}", "--set", "stages.stage2.dataset.kind=real",
                 "--set", f"stages.stage2.init_from={short_demo_run / 'stage1' / 'adapter'}",
                 "--set", "stages.stage2.max_steps=1", "--set", "stages.stage2.dataset.eval_fraction=0"])
    assert code == 0
    lineage = json.loads((tmp_path / "runs" / "demo" / "stage2" / "lineage.json").read_text())
    assert lineage["datasets"][0]["kept"] == 2 and lineage["datasets"][0]["schema"] == "messages"
    assert lineage["parent_adapter"]["path"] == str(short_demo_run / "stage1" / "adapter")


def test_dpo_pairs_are_in_trls_preference_format(store_with_reviews, tmp_path, tiny_mistral_dir, demo_tokenizer):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    from trainer.train.templates import select_training_template

    path, _ = store_with_reviews
    main(["export-feedback", "--store", str(path), "--out", str(tmp_path / "chatml")])
    rows = [{k: v for k, v in r.items() if k != "id"} for r in read(tmp_path / "chatml" / "dpo.jsonl")]
    assert all(is_conversational(r) for r in rows)
    chatml = copy.deepcopy(demo_tokenizer)  # the session fixture stays as the model ships it
    chatml.chat_template = select_training_template(demo_tokenizer).text
    rendered = apply_chat_template(rows[0], chatml)
    assert rendered["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert rendered["prompt"].endswith("Follow-up 1?<|im_end|>\n<|im_start|>assistant\n")
    assert rendered["chosen"] == "Corrected answer 1.<|im_end|>\n"
    assert rendered["rejected"] == "Second answer 1.<|im_end|>\n"

    # Mistral-Instruct: without the system prompt, TRL splits prompt and answers cleanly, and DPO trains.
    main(["export-feedback", "--store", str(path), "--out", str(tmp_path / "mistral"), "--no-system-prompt"])
    rows = [{k: v for k, v in r.items() if k != "id"} for r in read(tmp_path / "mistral" / "dpo.jsonl")]
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    rendered = apply_chat_template(rows[0], tokenizer)
    assert rendered["prompt"] == "<s>[INST] Question 1 about visas?[/INST] Answer 1: check the official site.</s>" \
                                 "[INST] Follow-up 1?[/INST]"
    assert rendered["chosen"] == " Corrected answer 1.</s>"
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir)
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, report_to="none",
                                                    per_device_train_batch_size=3, use_cpu=True, bf16=False,
                                                    activation_checkpointing=False),
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
