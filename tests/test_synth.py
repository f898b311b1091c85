"""The grounded generator: the prompt plan, the providers (a real `transformers serve` endpoint, a flaky local
server for retries and resumption, the in-process demo model) and the audited dataset it writes."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import REPO
from trainer.inference.endpoint import EndpointEngine
from trainer.inference.model import BASE, BatchAnswers
from trainer.providers import OpenAICompatibleProvider, ProviderError
from trainer.jobs.synth import (GenerationError, LocalProvider, PlanItem, SynthSettings, build_plan, generate,
                                load_exemplars, read_done, system_prompt)

SEED = REPO / "data" / "seed" / "stage1_grounded.jsonl"


def short_answers(concurrency: int) -> SynthSettings:
    return SynthSettings(replace(LocalProvider.DECODING, max_new_tokens=16), concurrency=concurrency)


@pytest.fixture(scope="module")
def kb():
    from trainer.kb.loader import load_kb

    return load_kb(REPO / "data" / "kb")


# A local OpenAI-compatible server whose answers are scripted: 429 / 500 / 401 / 200.

class ScriptedServer:
    """Answers POST /v1/chat/completions from a queue of status codes (then 200s); records every request."""

    def __init__(self, script=(), fail_when=None):
        self.script, self.fail_when, self.requests = list(script), fail_when, []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, body, self.headers.get("Authorization")))
                    status = server.script.pop(0) if server.script else 200
                question = body["messages"][-1]["content"]
                if server.fail_when and server.fail_when(question):
                    status = 500
                if status != 200:
                    payload = json.dumps({"error": f"scripted {status}"}).encode()
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                else:
                    answer = f"### Answer\n\n- About: {question}\n- Check the official source before you apply."
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body.get("model") or "stub",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script=(), fail_when=None):
        servers.append(ScriptedServer(script, fail_when))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def plan_items(n: int, turns: int = 2) -> list[PlanItem]:
    persona = {"home_country": "India", "home_code": "IN", "degree_level": "master", "budget": "tight budget",
               "background": "fresh graduate"}
    return [PlanItem(f"plan-{i:03d}", "visas", persona, "DE", f"Question {i}?",
                     tuple(f"Follow-up {i}.{k}?" for k in range(turns - 1)),
                     ({"text": "Germany: a fact.", "source": "https://www.study-in-germany.de", "as_of": "2026-11"},))
            for i in range(n)]


def test_retries_429_then_500_then_answers(scripted):
    server = scripted([429, 500])
    waits = []
    provider = OpenAICompatibleProvider(server.base_url, "stub-model", api_key="sk-secret", sleep=waits.append)
    text, usage = provider.complete([{"role": "user", "content": "hello?"}], max_tokens=20, temperature=0)
    assert "hello?" in text
    assert waits == [0.0, 1.0]  # Retry-After: 0, then exponential back-off (0.5 * 2**1)
    assert (usage.requests, usage.retries, usage.prompt_tokens, usage.completion_tokens) == (1, 2, 11, 7)
    assert [path for path, _, _ in server.requests] == ["/v1/chat/completions"] * 3
    assert server.requests[0][2] == "Bearer sk-secret" and server.requests[0][1]["model"] == "stub-model"
    # HF_HUB_OFFLINE lets the named endpoint through and still refuses the Hub.
    from huggingface_hub import get_session, is_offline_mode
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert is_offline_mode()
    with pytest.raises(OfflineModeIsEnabled):
        get_session().get("https://huggingface.co/api/models/HuggingFaceTB/SmolLM2-135M-Instruct")


def test_gives_up_after_max_retries_and_fails_fast_on_401(scripted):
    server = scripted([500] * 10)
    provider = OpenAICompatibleProvider(server.base_url, "m", max_retries=3, sleep=lambda s: None)
    with pytest.raises(ProviderError, match="HTTP 500"):
        provider.complete([{"role": "user", "content": "q"}], max_tokens=5, temperature=0)
    assert len(server.requests) == 4

    server = scripted([401])
    provider = OpenAICompatibleProvider(server.base_url, "m", api_key="sk-wrong", sleep=lambda s: None)
    with pytest.raises(ProviderError, match="HTTP 401") as info:
        provider.complete([{"role": "user", "content": "q"}], max_tokens=5, temperature=0)
    assert len(server.requests) == 1 and "sk-wrong" not in str(info.value)


def test_connection_refused_is_retried_then_reported():
    waits = []
    provider = OpenAICompatibleProvider("http://127.0.0.1:9/v1", "m", max_retries=2, timeout=2, sleep=waits.append)
    with pytest.raises(ProviderError, match="127.0.0.1:9"):
        provider.complete([{"role": "user", "content": "q"}], max_tokens=5, temperature=0)
    assert waits == [0.5, 1.0]


def test_generation_resumes_without_duplicates(scripted, tmp_path):
    raw = tmp_path / "raw.jsonl"
    plan = plan_items(8, turns=3)
    # First run: the server fails every request about conversation 5, the run stops with an error. The endpoint
    # answers groups of ENDPOINT_WAVES (4) x 1 conversations turn by turn: the first group is written, the second
    # (which holds conversation 5) is not.
    broken = scripted(fail_when=lambda q: q.startswith(("Question 5?", "Follow-up 5.")))
    engine = EndpointEngine(broken.base_url, {BASE: "m"}, concurrency=1, max_retries=1, sleep=lambda s: None)
    with pytest.raises(ProviderError, match=r"HTTP 500"):
        generate(plan, engine, raw, short_answers(concurrency=1), progress=False)
    first = read_done(raw)
    assert sorted(first) == [f"plan-00{i}" for i in range(4)]

    # Second run against a healthy server that asks for one retry first: only the missing conversations are asked
    # for, and the retry is in the usage of the conversation that took it.
    healthy = scripted(script=[429])
    engine = EndpointEngine(healthy.base_url, {BASE: "m"}, concurrency=4, sleep=lambda s: None)
    run = generate(plan, engine, raw, short_answers(concurrency=4), progress=False)
    ids = [json.loads(line)["plan_id"] for line in raw.read_text().splitlines()]
    assert sorted(ids) == [p.id for p in plan] and len(ids) == len(set(ids))
    assert run.skipped == len(first) and len(run.rows) == 8
    assert len(healthy.requests) == 3 * (8 - len(first)) + 1  # three questions per conversation and one retry
    assert run.usage.requests == 12 and run.usage.retries == 1 and run.usage.completion_tokens == 12 * 7
    assert sum(r["usage"]["retries"] for r in run.rows) == 1
    row = run.rows[5]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
    assert row["provenance"]["provider"] == "openai-compatible" and row["usage"]["completion_tokens"] == 21
    # The system prompt carries the plan's facts; it is not stored in the conversation.
    assert "Germany: a fact." in healthy.requests[0][1]["messages"][0]["content"]


def test_ctrl_c_keeps_finished_conversations(tmp_path):
    class InterruptedEngine:
        """An engine (answer_all, as an endpoint's) whose third pass is cut by Ctrl-C."""

        kind, name = "test", "interrupting engine"

        def __init__(self):
            self.calls = 0

        def answer_all(self, conversations, adapter, settings, **unused):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            n = len(conversations)
            return BatchAnswers(["### Answer\n\n- a point"] * n, [1] * n, [1] * n, 0.0)

    raw = tmp_path / "raw.jsonl"
    plan = plan_items(6, turns=2)
    run = generate(plan, InterruptedEngine(), raw, SynthSettings(concurrency=1), progress=False)
    assert run.interrupted and len(run.rows) == 4  # passes 1-2 finished the first group's two-turn conversations
    # A torn last line (a crash mid-write) is ignored, and the re-run completes the rest exactly once.
    with open(raw, "a") as fh:
        fh.write('{"plan_id": "plan-004", "messa')
    again = generate(plan, InterruptedEngine(), raw, SynthSettings(concurrency=1), progress=False)
    assert not again.interrupted and [r["plan_id"] for r in again.rows] == [p.id for p in plan]


# The plan

def test_plan_honours_the_false_premise_share_and_the_kb(kb):
    for share, n in ((0.1, 100), (0.25, 40), (0.0, 30)):
        plan = build_plan(kb, n, seed=7, false_premise_share=share)
        assert len(plan) == n and len({p.id for p in plan}) == n
        assert sum(p.false_premise is not None for p in plan) == round(n * share)
    plan = build_plan(kb, 120, seed=7)
    assert [p.id for p in plan] == [p.id for p in build_plan(kb, 120, seed=7)]  # stable ids: resumable
    assert {p.topic for p in plan} >= {"admissions", "sop", "documents", "tests", "scholarships", "visas", "costs",
                                       "housing", "health insurance", "work rights", "culture", "careers",
                                       "language"}
    by_name = {u.name: u for u in kb.universities}
    for item in plan:
        assert 3 <= len(item.followups) <= 5  # 4-6 exchanges
        assert item.facts and all(f["source"].startswith("http") and f["as_of"] for f in item.facts)
        if item.false_premise is None and item.topic == "admissions":
            name = next(n for n in by_name if n in item.question)
            degree, field = item.question.split("for the ", 1)[1].split(f" at {name}")[0].split(" in ", 1)
            assert kb.offers(by_name[name], degree, field) is True, item.question
        if item.false_premise is not None:
            assert item.false_premise["correction"] and item.false_premise["source"].startswith("http")
            assert "false premise" in system_prompt(item)


def test_plan_uses_seed_exemplars_of_the_same_kind(kb):
    exemplars = load_exemplars(SEED)
    plan = build_plan(kb, 60, seed=3, false_premise_share=0.2, exemplars=exemplars)
    by_id = {e["id"]: e for e in exemplars}
    for item in plan:
        chosen = by_id[item.exemplar_id]
        if item.false_premise:
            assert chosen["false_premise"]
        elif any(e["topic"] == item.topic and not e["false_premise"] for e in exemplars):
            assert chosen["topic"] == item.topic
        assert chosen["messages"][1]["content"] in system_prompt(item)


def test_follow_ups_come_from_the_file_and_a_bad_file_is_one_line(kb, tmp_path):
    from trainer.jobs.synth import TOPICS, load_followups

    shipped = load_followups()
    plan = build_plan(kb, 26, seed=5, turns=(8, 8))
    for item in plan:  # 3 follow-ups: first the topic's own, then general ones
        assert len(item.followups) == 3 and item.followups[0] in shipped.topics[item.topic]
        assert all(q in shipped.topics[item.topic] + shipped.general for q in item.followups)
    ours = tmp_path / "followups.yaml"
    ours.write_text("topics:\n" + "".join(f"  {t}: [{t} {k}?]\n" for k, t in enumerate(TOPICS))
                    + "general: [Und jetzt?]\n")
    custom = build_plan(kb, 26, seed=5, turns=(8, 8), followups=load_followups(ours))
    assert all(item.followups[0].startswith(item.topic) and item.followups[1:] == ("Und jetzt?",) for item in custom)

    for text, message in (("topics: {visas: [a]}\ngeneral: [b]\n", "topics: no follow-ups for admissions"),
                          ("topics: {visa: [a]}\n", "topics.visa: not a topic of the generator (did you mean 'visas'?)"),
                          (ours.read_text().replace("general: [Und jetzt?]", "general: []"),
                           "general: expected a list of questions"),
                          (ours.read_text() + "extra: 1\n", "extra: unknown key"),
                          ("topics: [", "not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(GenerationError) as err:
            load_followups(bad)
        assert str(err.value).startswith(f"{bad}: ") and message in str(err.value), str(err.value)


def test_exchanges_out_of_range_is_one_error_line(capsys):
    from trainer.__main__ import main

    assert main(["generate", "--n", "2", "--exchanges", "5", "3"]) == 2
    assert "--exchanges 5 3" in capsys.readouterr().err


def test_bad_exemplar_file_names_the_line(tmp_path):
    bad = tmp_path / "seed.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                   '"content": "a"}]}\n{"id": "b", "messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(GenerationError, match=r"seed.jsonl:2: "):
        load_exemplars(bad)


# The local provider's turn cache

@pytest.fixture(scope="module")
def local_provider(demo_model_dir):
    return LocalProvider()


def test_cached_turns_say_what_whole_prompts_say(local_provider):
    """Greedy decoding: a group continued on its KV cache answers token for token as re-sending every whole prompt
    does, with prompts of different lengths in one batch, an answer that ends early and a conversation that ends
    first, while computing only each turn's new tokens."""
    from trainer.inference.decode import TurnCache

    system = {"role": "system", "content": "You are a careful study-abroad counsellor. Answer briefly."}
    questions = {"a": ["Which documents do I need for a student visa to Germany?", "How long does it take?",
                       "Is it expensive?"],
                 "b": ["Reply with one word: yes or no. Is Berlin in Germany?",
                       "Can I work part-time in Canada while I study there?"]}
    tokenizer, computed = local_provider.served.tokenizer, []
    hook = local_provider.served.model.register_forward_pre_hook(
        lambda module, args, kwargs: computed.append(kwargs["input_ids"].numel()), with_kwargs=True)

    greedy = replace(LocalProvider.DECODING, max_new_tokens=16, temperature=0)

    def converse(cache):
        computed.clear()
        talks, lengths = {k: [] for k in questions}, []
        for turn in range(3):
            keys = [k for k in questions if turn < len(questions[k])]
            for k in keys:
                talks[k].append({"role": "user", "content": questions[k][turn]})
            reuse = {"cache": cache, "keys": keys} if cache is not None else {}
            answers = local_provider.answer_all([[system, *talks[k]] for k in keys], BASE, greedy, **reuse)
            for k, text, new_tokens in zip(keys, answers.texts, answers.new_tokens):
                talks[k].append({"role": "assistant", "content": text})
                lengths.append(new_tokens)
            if cache is not None:
                # Each row attends to its own conversation so far and nothing else (no padding, nothing generated
                # after its answer ended): all of it but the last token sampled and the template's end of message.
                for row, k in enumerate(keys):
                    seen = cache.ids[row][cache.mask[row] == 1].tolist()
                    text = tokenizer.apply_chat_template([system, *talks[k]], tokenize=False)
                    so_far = tokenizer(text, add_special_tokens=False)["input_ids"]
                    assert seen == so_far[:len(seen)] and len(seen) >= len(so_far) - 3, (turn, k)
        return talks, lengths, sum(computed)

    try:
        whole, lengths, whole_tokens = converse(None)
        cache = TurnCache()
        cached, cached_lengths, cached_tokens = converse(cache)
    finally:
        hook.remove()
    assert cached == whole and cached_lengths == lengths
    assert min(lengths) < 16 and max(lengths) == 16  # one answer ended early, the batch went on
    assert cache.keys == ["a"]  # b left the batch after its second turn
    assert cached_tokens < whole_tokens * 0.75


# End to end through the CLI

def _check_output(out: Path, n: int) -> dict:
    import datasets

    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["counts"].values()) == n
    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert set(dataset) == {"train", "eval", "audit"}
    assert sum(len(dataset[s]) for s in dataset) == n
    for split in ("train", "eval", "audit"):
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == summary["counts"][split]
        for row in rows:
            assert {"provider", "model", "kb_version", "kb_facts", "exemplar"} <= set(row["provenance"])
            if split == "audit":
                assert any(flag.startswith("fail:") for flag in row["flags"])
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and str(summary["counts"]["audit"]) in card
    assert (out / "audit.md").is_file()
    return summary


@pytest.mark.slow
def test_generate_offline_with_the_demo_model(tmp_path, capsys):
    """The default provider (the in-process demo model), shortened: 2 exchanges of 16 tokens."""
    from trainer.__main__ import main

    out = tmp_path / "synth"
    assert main(["generate", "--n", "4", "--out", str(out), "--max-tokens", "16", "--concurrency", "4",
                 "--exchanges", "2", "2"]) == 0
    summary = _check_output(out, 4)
    assert summary["provider"].startswith("local transformers") and summary["usage"]["completion_tokens"] > 0
    assert re.search(r"temperature 0\.7, at most\s+16 tokens per answer", (out / "README.md").read_text())
    # Running it again generates nothing new.
    assert main(["generate", "--n", "4", "--out", str(out), "--max-tokens", "16", "--exchanges", "2", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_rows"] == 4
    assert len((out / "raw.jsonl").read_text().splitlines()) == 4


def test_finish_saves_loadable_splits_even_when_one_is_empty(kb, tmp_path):
    """All rows fail the audit: train and eval are empty, and the dataset still loads with its schema."""
    import datasets

    from trainer.providers import Usage
    from trainer.jobs.synth import GenerationRun, finish

    rows = [{"plan_id": f"p{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                               {"role": "assistant", "content": "Too short."}],
             "topic": "visas", "persona": {}, "destination": "DE", "false_premise": None,
             "provenance": {"provider": "test", "model": "m", "kb_version": kb.version, "kb_facts": [],
                            "exemplar": None}, "usage": {}} for i in range(3)]
    summary = finish(GenerationRun(rows, Usage(), 0, 1.0), kb, tmp_path, provider_name="test",
                     settings=SynthSettings())
    assert summary["counts"] == {"train": 0, "eval": 0, "audit": 3}
    dataset = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert {k: len(v) for k, v in dataset.items()} == {"train": 0, "eval": 0, "audit": 3}
    assert dataset["train"].column_names == dataset["audit"].column_names
    assert all(any(f.startswith("fail:length") for f in r["flags"]) for r in dataset["audit"])


def test_the_generator_writes_through_the_one_engine_interface(scripted):
    """Local model and endpoint alike are engines; the endpoint's is the eval's too, and the audit's judge asks it."""
    from trainer.eval.engine import ServerEngine
    from trainer.inference.engine import Engine, LocalEngine
    from trainer.jobs.synth import LocalProvider, llm_judge

    assert issubclass(LocalProvider, LocalEngine) and issubclass(ServerEngine, EndpointEngine)
    assert all(hasattr(LocalProvider, m) for m in ("stream", "generate", "answer_all", "adapter_names"))
    server = scripted()
    engine = EndpointEngine(server.base_url, {BASE: "m"}, api_key="sk-secret", sleep=lambda s: None)
    assert isinstance(engine, Engine) and engine.adapter_names == []
    answers = engine.answer_all([[{"role": "user", "content": f"q{i}"}] for i in range(3)], BASE,
                                replace(LocalProvider.DECODING, max_new_tokens=5, temperature=0.3))
    assert [t.split("About: ")[1].split("\n")[0] for t in answers.texts] == ["q0", "q1", "q2"]  # in order
    assert answers.new_tokens == [7, 7, 7] and answers.retries == [0, 0, 0]
    body = server.requests[0][1]
    assert body["max_tokens"] == 5 and body["temperature"] == 0.3 and "repetition_penalty" not in body
    assert engine.generate([{"role": "user", "content": "hi"}]).startswith("### Answer")
    ok, reason = llm_judge(engine)([{"role": "user", "content": "q"}], [])
    assert ok is None and "no verdict" in reason  # the scripted server does not judge: nothing flagged
    assert server.requests[-1][1]["temperature"] == 0 and server.requests[-1][1]["max_tokens"] == 96
    failing = scripted(script=[401])
    with pytest.raises(ProviderError, match="HTTP 401") as caught:
        EndpointEngine(failing.base_url, {BASE: "m"}, api_key="sk-secret").generate([{"role": "user", "content": "q"}])
    assert "sk-secret" not in str(caught.value)
