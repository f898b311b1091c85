"""The one inference path (`trainer.inference.model.AdapterModel`) as the eval and the app use it, on the tiny Mistral: the
same greedy answer for the same prompt and adapter whichever path asks, and the eval's two output files kept apart."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from helpers import make_adapter

from trainer.inference.model import BASE, GenerationSettings

PROMPTS = [
    [{"role": "user", "content": "How do I apply for a student visa?"}],
    [{"role": "system", "content": "You are a careful study-abroad counsellor. Answer in markdown."},
     {"role": "user", "content": "Which documents do I need for a UK Student visa, and when should I apply?"}],
    [{"role": "user", "content": "Is health insurance compulsory?"},
     {"role": "assistant", "content": "Yes, in most countries."},
     {"role": "user", "content": "And in Germany?"}],
]


@pytest.fixture(scope="module", params=[False, True], ids=["unquantized", "4-bit"])
def both_paths(request, tiny_mistral_dir, tmp_path_factory):
    """The app's engine and the eval's loader, each with the same two adapters on the same base."""
    from space.engine import InferenceEngine
    from space.registry import AdapterRegistry
    from trainer.train.config import QuantizationSettings
    from trainer.inference.model import AdapterSource, load_adapter_model
    from trainer.train.model import resolve_base_model
    from trainer.hub.space_settings import load_space_config

    root = tmp_path_factory.mktemp("paths")
    make_adapter(tiny_mistral_dir, root / "a", seed=1)
    make_adapter(tiny_mistral_dir, root / "b", seed=2)
    (root / "space.yaml").write_text("discover_runs: false\nadapters:\n"
                                     f"  - {{name: stage1, path: {root / 'a'}}}\n"
                                     f"  - {{name: stage2, path: {root / 'b'}}}\n")
    engine = InferenceEngine(str(tiny_mistral_dir), AdapterRegistry.from_config(load_space_config(root / "space.yaml"),
                                                                                root),
                             load_in_4bit=request.param).load()
    # What trainer.eval.run.load_models loads: the run's base and every stage's adapter with its saved template
    templates = {name: (root / d / "chat_template.jinja").read_text() for name, d in (("stage1", "a"), ("stage2", "b"))}
    evaluated = load_adapter_model(resolve_base_model(str(tiny_mistral_dir)),
                                   QuantizationSettings(load_in_4bit=request.param),
                                   [AdapterSource(name, str(root / d), template=templates[name])
                                    for name, d in (("stage1", "a"), ("stage2", "b"))])
    return engine, evaluated, request.param


@pytest.mark.slow
def test_greedy_answers_are_the_same_through_the_eval_and_the_engine(both_paths):
    """The eval answers a left-padded batch (longest prompt first); the app streams one prompt on its generation
    thread, or answers it whole. For each adapter and the base, every path gives the same greedy answer.

    In 4-bit the compute dtype is bf16: there left padding alone moves a logit by one bf16 step (~4e-3), enough to
    flip the near-tied tokens of a tiny random model, so the 4-bit eval batch holds one prompt, as the app's does."""
    from trainer.eval.models import GREEDY

    engine, evaluated, quantized = both_paths
    settings = replace(GREEDY, max_new_tokens=16)
    answers = {}
    for name in ("stage2", BASE, "stage1"):
        batch = evaluated.generate(PROMPTS, name, settings, batch_size=1 if quantized else 8)
        assert len(set(map(len, (evaluated.prompt_ids(p, name) for p in PROMPTS)))) == 3  # padding is exercised
        for prompt, from_eval in zip(PROMPTS, batch.texts):
            streamed = ""
            for streamed in engine.stream(prompt, name, settings):
                pass
            assert from_eval and streamed.strip() == from_eval == engine.generate(prompt, name, settings), name
        answers[name] = batch.texts
    assert len({tuple(texts) for texts in answers.values()}) == 3  # the adapters do change the answers


def test_batch_sizes_and_activation_order_do_not_change_the_answers(both_paths):
    _, evaluated, quantized = both_paths
    settings = GenerationSettings(max_new_tokens=12, temperature=0)
    together = evaluated.generate(PROMPTS, "stage1", settings, batch_size=8)
    evaluated.activate("stage2")
    evaluated.activate(BASE)
    again = evaluated.generate(PROMPTS, "stage1", settings, batch_size=8)
    assert together == replace(again, seconds=together.seconds)
    if not quantized:  # (bf16 rounding differs with the padding, see above)
        alone = evaluated.generate(PROMPTS, "stage1", settings, batch_size=1)
        assert together.texts == alone.texts and together.new_tokens == alone.new_tokens
    assert together.prompt_tokens == [len(evaluated.prompt_ids(p, "stage1")) for p in PROMPTS]
    assert all(0 < n <= 12 for n in together.new_tokens)
    with pytest.raises(KeyError, match="not loaded"):
        evaluated.activate("stage3")


def test_results_and_answers_are_written_from_separate_data(tmp_path):
    """results.json's model entries and answers.jsonl are built from separate data: writing either first leaves the
    other complete, and no private field reaches results.json."""
    from trainer.kb.claims import Flag
    from trainer.eval.items import AnswerItem
    from trainer.eval.rubric import Question, QuestionScore
    from trainer.eval.run import _write_answers
    from trainer.train.lineage import write_json

    question = Question(id="q1", topic="visas", question="Which visa?", source="https://example.org",
                        false_premise=False, must_mention=(), must_not_claim=(), correction=(), kb=())
    items = [AnswerItem("rubric", "q1", ({"role": "user", "content": "Which visa?"},), "Which visa?", question),
             AnswerItem("reference", "abc#1", ({"role": "user", "content": "Hi?"},), "Hi?", reference="Hello.",
                        conversation="abc")]
    texts = {name: [f"{name} answer", f"{name} reply"] for name in (BASE, "stage1")}
    new_tokens = {name: [5, 3] for name in texts}
    scores = {name: [QuestionScore(id="q1", score=1.0, passed=True, points=(True,), claims=(), corrected=None),
                     None] for name in texts}
    flag = Flag("kb_contradiction", "error", "a detail", source="https://example.org/kb")
    flags = {name: [[], [flag]] for name in texts}
    written = []
    for order in ("answers first", "results first"):
        models = {name: {"chat_template_sha256": "0" * 64, "new_tokens": sum(new_tokens[name]),
                         "_private": object()} for name in texts}
        results = {"base": {k: v for k, v in models[BASE].items() if not k.startswith("_")},
                   "adapters": {"stage1": {k: v for k, v in models["stage1"].items() if not k.startswith("_")}}}
        out = tmp_path / order.replace(" ", "-")
        out.mkdir()
        steps = [lambda: _write_answers(out / "answers.jsonl", items, texts, new_tokens, scores, flags,
                                        [True, False], {}, None),
                 lambda: write_json(out / "results.json", results)]
        for step in steps if order == "answers first" else reversed(steps):
            step()
        rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
        saved = json.loads((out / "results.json").read_text())
        assert [(r["model"], r["kind"], r["new_tokens"], r["contaminated"]) for r in rows] == [
            (BASE, "rubric", 5, False), (BASE, "reference", 3, True),
            ("stage1", "rubric", 5, False), ("stage1", "reference", 3, True)]
        assert rows[0]["passed"] is True and "score" not in rows[1] and rows[1]["reference"] == "Hello."
        assert rows[1]["kb_flags"] == [{"rule": "kb_contradiction", "detail": "a detail",
                                        "source": "https://example.org/kb"}]
        for entry in (saved["base"], saved["adapters"]["stage1"]):
            assert not [key for key in entry if key.startswith("_")]
            assert entry["new_tokens"] == 8
        written.append(((out / "answers.jsonl").read_text(), saved))
    assert written[0] == written[1]
