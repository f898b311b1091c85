"""vLLM (the CPU build, `scripts/vllm.sh`) as the engine: a real server with a trained run's two adapters.

One server for the module, started through the script `trainer serve --start` runs, on the demo model and the
`short_demo_run` fixture's adapters (`demo/stage1`, `demo/stage2`). The app on `engine: openai` streams from it for
the base and each adapter and takes 16 visitors at once; and vLLM's greedy answers are compared token for token with
PEFT's on the unquantized base. (How the app takes a server that stops and comes back is the same for every
OpenAI-compatible server: tests/test_remote_engine.py checks it on `transformers serve`, in a third of the time.)
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import at_once, launch_app, stop_app

from trainer.hub import local_server as serve
from space.display import is_note, message_text
from trainer.inference.model import BASE

pytestmark = pytest.mark.slow

SYSTEM = "You are a careful study-abroad counsellor."
PROMPTS = [
    "How do I apply for a student visa for the United Kingdom?",
    "What documents do I need for a German blocked account?",
    "Can I work while studying in Canada?",
    "How much does it cost to study in Australia?",
    "What is OPT in the United States?",
    "How do I choose between a master's in the Netherlands and in Sweden?",
    "Is health insurance compulsory for students in Germany?",
    "What English test do universities in Ireland accept?",
]


@pytest.fixture(scope="module")
def vllm(short_demo_run, demo_model_dir, tmp_path_factory):
    """The server (a `serve.VLLMServer`, started) and the adapters it serves by name."""
    adapters = {f"{short_demo_run.name}/{stage}": short_demo_run / stage / "adapter" for stage in ("stage1", "stage2")}
    # -O0: no torch.compile at start-up (minutes on 2 cores); the tests check serving, not speed
    server = serve.VLLMServer(demo_model_dir, adapters, tmp_path_factory.mktemp("vllm"), optimization=0).start()
    try:
        yield server
    finally:
        server.stop()


def post(base_url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base_url}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def vllm_app(vllm, tmp_path_factory):
    """`python app.py` with `engine: openai` on the vLLM server: the base and both adapters."""
    root = tmp_path_factory.mktemp("vllm-app")
    adapters = "".join(f"  - name: {name}\n    served_name: {name}\n" for name in vllm.adapters)
    (root / "space.yaml").write_text(
        f"engine: openai\nopenai:\n  base_url: {vllm.base_url}\n  base_served_name: {vllm.model}\n  timeout_s: 300\n"
        f"adapters:\n{adapters}limits:\n  concurrency: 16\n  queue_size: 64\n"
        "generation:\n  temperature: 0\n  max_new_tokens: 16\n"
        "grounding:\n  enabled: false\n  check_answers: false\n"
        f"feedback:\n  store: {root / 'feedback.sqlite'}\n", encoding="utf-8")
    proc, url = launch_app(root / "space.yaml")
    try:
        yield url
    finally:
        stop_app(proc)


def chat(client, question, adapter, max_new_tokens=16):
    return client.predict(question, [], adapter, False, SYSTEM, 0, 0.9, max_new_tokens, api_name="/chat")


def test_each_adapter_is_applied_by_its_name(vllm):
    """vLLM lists the base and both adapters, and an adapter's name changes the model's next-token scores."""
    listed = {m["id"] for m in json.loads(urllib.request.urlopen(f"{vllm.base_url}/models").read())["data"]}
    assert listed == {vllm.model, *vllm.adapters}
    scores = {}
    for model in (vllm.model, *vllm.adapters):
        reply = post(vllm.base_url, "/completions", {"model": model, "prompt": "Studying abroad is", "max_tokens": 1,
                                                     "temperature": 0, "logprobs": 5})
        scores[model] = reply["choices"][0]["logprobs"]["top_logprobs"][0]
    first, *others = scores.values()
    assert all(other != first for other in others), scores  # the trained adapters moved the logits


def test_the_app_streams_from_vllm_for_the_base_and_each_adapter(vllm, vllm_app):
    from gradio_client import Client

    client = Client(vllm_app, verbose=False)
    for adapter in (BASE, *vllm.adapters):
        job = client.submit("How do I open a bank account abroad?", [], adapter, False, SYSTEM, 0, 0.9, 16,
                            api_name="/chat")
        updates = list(job)
        history, _ = job.result()
        assert [m["role"] for m in history] == ["user", "assistant"] and not is_note(history[-1]), history
        assert message_text(history[-1]).strip()
        assert len(updates) >= 3, f"{adapter}: the answer did not stream"


def test_sixteen_visitors_at_once(vllm, vllm_app):
    from gradio_client import Client

    names = [BASE, *vllm.adapters]

    def visitor(n: int) -> tuple[float, float]:
        started = time.time()
        history, _ = chat(Client(vllm_app, verbose=False), f"Question {n}: how do I find housing?",
                          names[n % len(names)])
        assert message_text(history[-1]).strip() and not is_note(history[-1]), history
        return started, time.time()

    spans = at_once(16, visitor, timeout=900)
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())  # all in flight


def test_greedy_answers_match_peft_on_the_unquantized_base(vllm, demo_model_dir):
    """vLLM serves the adapter on the full-precision base; PEFT on the same float32 base must give the same first 32
    tokens at greedy on most prompts (rendered by the adapter's own chat template for both)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, folder = list(vllm.adapters.items())[-1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32),
                                      folder).eval()
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
                                           tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    # vLLM answers every prompt at once (one batch on the server) while PEFT answers them here one by one
    with ThreadPoolExecutor(len(texts)) as pool:
        replies = [pool.submit(post, vllm.base_url, "/completions",
                               {"model": name, "prompt": text, "max_tokens": 32, "temperature": 0}) for text in texts]
        same, differing = 0, []
        for prompt, text, reply in zip(PROMPTS, texts, replies):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            ours = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            theirs = reply.result()["choices"][0]["text"]
            if ours.strip() == theirs.strip():
                same += 1
            else:
                differing.append((prompt, ours, theirs))
    print(f"vLLM vs PEFT, greedy, first 32 tokens: {same}/{len(PROMPTS)} identical")
    assert same > len(PROMPTS) // 2, differing


def test_the_eval_asks_vllm_for_every_model_and_reads_its_answers(vllm, short_demo_run, tmp_path):
    from trainer.__main__ import main

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\n" + "\n".join(f'"{p}"' for p in PROMPTS[:4]) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    assert main(["eval", "--run", str(short_demo_run), "--questions", str(prompts), "--engine", "openai",
                 "--base-url", vllm.base_url, "--base-served-name", vllm.model, "--max-new-tokens", "16",
                 "--out", str(out), "--no-contamination"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["engine"]["base_url"] == vllm.base_url
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 * 3 and all(a["answer"].strip() for a in answers)


def test_generate_uses_vllm_as_its_openai_compatible_provider(vllm, tmp_path, monkeypatch):
    """`generate --base-url`: InferenceClient against a real OpenAI-compatible server, with a key, a false-premise
    share and prices; the key is never written."""
    from trainer.__main__ import main

    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-never-written")
    out = tmp_path / "synth"
    assert main(["generate", "--n", "2", "--out", str(out), "--base-url", vllm.base_url, "--model", vllm.model,
                 "--api-key-env", "SYNTH_TEST_KEY", "--max-tokens", "24", "--concurrency", "2", "--exchanges", "2",
                 "2", "--false-premise-share", "0.5", "--price-in", "0.5", "--price-out", "1.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["usage"]["requests"] == 2 * 2 and summary["usage"]["completion_tokens"] > 0
    assert summary["false_premise"] == 1 and summary["cost_estimate"] > 0
    assert len((out / "raw.jsonl").read_text().splitlines()) == 2
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md"):
            assert "sk-never-written" not in path.read_text()
