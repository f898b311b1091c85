"""`eval --engine openai` and outside prompt sets read on their own.

The server is `eval_stub` (conftest; `stub_servers.EvalStub`): the remote engine's stub, also answering whole
completions (the eval asks for whole answers, with the server's token usage) and counting the requests in flight. The run is written
by `run_folder` without training: with the server answering and no held-out conversations, nothing loads here, so
the whole evaluation, report included, runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from stub_servers import url_of

from trainer.__main__ import main
from trainer.jobs import EvalJob, load_eval_job
from trainer.hub.space_settings import DEFAULT_SYSTEM_PROMPT
from trainer.typed_yaml import ConfigError

PROMPTS = [f"Question {i}: which documents do I need to study in Canada?" for i in range(8)]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """Two finished-looking demo stages (placeholder adapters) with real data records: `runs/demo`."""
    from run_folder import data_files, write_stage

    train, _ = data_files(tmp_path / "data")
    for stage in ("stage1", "stage2"):
        write_stage(tmp_path, f"stages.{stage}.dataset.path={train}", f"stages.{stage}.dataset.eval_fraction=0.25",
                    stage=stage)
    return tmp_path / "runs" / "demo"


def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_prompts.csv"
    rows = [f'"{p}",{"Check the official page." if i % 4 == 0 else ""}' for i, p in enumerate(PROMPTS)]
    path.write_text("prompt,reference\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def answers_asked(server) -> list[dict]:
    """The eval's requests, without the one-token probe each model gets first."""
    return [r for r in server.requests if r["body"]["max_tokens"] != 1]


# Outside prompt sets: only those prompts, and no verdict where nothing gates

def test_an_outside_prompt_set_is_answered_alone_and_reads_not_gated(run_dir, tmp_path, eval_stub, capsys):
    prompts = prompt_file(tmp_path)
    assert main(["eval", "--run", str(run_dir), "--questions", str(prompts), "--engine", "openai",
                 "--base-url", url_of(eval_stub), "--concurrency", "4", "--max-new-tokens", "7"]) == 0
    printed = capsys.readouterr().out
    assert "no held-out turns (--held-out adds them)" in printed and "loaded" not in printed

    # every model answered exactly the 8 prompts, greedy, with the rendered messages, 4 at a time
    asked = answers_asked(eval_stub)
    served = {"base": "smollm2-135m-instruct", "stage1": "demo/stage1", "stage2": "demo/stage2"}
    assert sorted(r["body"]["model"] for r in asked) == sorted(list(served.values()) * len(PROMPTS))
    for r in asked:
        body = r["body"]
        assert body["temperature"] == 0 and body["max_tokens"] == 7 and body["repetition_penalty"] == 1.1
        assert body["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
        assert body["messages"][1]["role"] == "user" and len(body["messages"]) == 2
    assert {r["body"]["messages"][1]["content"] for r in asked} == set(PROMPTS)
    assert 1 < eval_stub.max_in_flight <= 4

    out = run_dir / "eval"
    results = json.loads((out / "results.json").read_text())
    assert results["engine"]["name"] == "openai" and results["engine"]["models"] == served
    assert results["engine"]["base_url"] == url_of(eval_stub) and results["settings"]["generation"]["engine"] == "openai"
    assert results["quantization"] is None and results["load_seconds"] == 0
    n = results["n"]
    assert (n["prompts"], n["answers_per_model"], n["reference_prompts"], n["eval_conversations"]) == (8, 8, 0, 0)
    assert n["held_out_asked"] is False and n["prompts_with_reference"] == 2
    for name, entry in [("base", results["base"]), *results["adapters"].items()]:
        assert "eval_loss" not in entry["metrics"] and {"markdown_rate", "rouge_l"} <= set(entry["metrics"])
        assert entry["throughput"]["samples"] == 8
        assert entry["throughput"]["new_tokens"] == 8 * len(f"Answer from {served[name]} about your question".split())
    for stage, gate in results["gate"].items():
        assert gate["verdict"] == "not gated" and gate["passed"] is None
        assert gate["summary"].startswith("not gated: nothing the gate decides on was measured")
        lineage = json.loads((run_dir / stage / "lineage.json").read_text())
        assert lineage["evaluation"]["verdict"] == "not gated"
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 * 8 and all(a["kind"] == "prompt" for a in answers)
    assert {a["answer"] for a in answers if a["model"] == "stage2"} == {"Answer from demo/stage2 about your question"}

    report = (out / "report.md").read_text()
    assert "- **stage1: NOT GATED** — not gated:" in report and "INCONCLUSIVE" not in report
    for empty in ("## Rubric by question", "## Held-out loss per split", "eval loss (n=", "| rubric accuracy"):
        assert empty not in report, empty
    assert "## Held-out conversations" in report and "Not asked" in report
    assert f"answers from `{url_of(eval_stub)}`" in report and "chat templates: the server's" in report


def test_the_plan_asks_held_out_turns_with_a_rubric_and_only_on_request_with_a_prompt_set(run_dir, tmp_path):
    from trainer.eval.run import plan_evaluation

    prompts = str(prompt_file(tmp_path))
    rubric = plan_evaluation(run_dir, EvalJob(limit=2))
    assert rubric.held_out_asked and rubric.held_out and rubric.references
    alone = plan_evaluation(run_dir, EvalJob(questions=prompts))
    assert not alone.held_out_asked and alone.held_out == [] and alone.references == []
    assert [i.kind for i in alone.items] == ["prompt"] * len(PROMPTS)
    both = plan_evaluation(run_dir, EvalJob(questions=prompts, held_out=True))
    assert both.held_out_asked and len(both.held_out) == len(rubric.held_out)
    assert {i.kind for i in both.items} == {"prompt", "reference"}
    assert not plan_evaluation(run_dir, EvalJob(limit=2, held_out=False)).held_out


# The rubric through the engine: names, key, grounding, the same report

def test_the_rubric_grounded_through_the_engine_with_its_own_names_and_key(run_dir, eval_stub, monkeypatch):
    from trainer.eval.run import plan_evaluation
    from trainer.kb.retrieve import RetrievalSettings, Retriever, grounded_messages

    monkeypatch.setenv("EVAL_ENGINE_TEST_KEY", "sk-engine-secret-000")
    settings = run_dir.parent / "engine.yaml"  # the same settings as a file: a new experiment is a YAML
    settings.write_text(yaml.safe_dump({"engine": "openai", "base_url": url_of(eval_stub), "concurrency": 3,
                                        "base_served_name": "my-base", "adapter_served_name": "{stage}-lora",
                                        "api_key_env": "EVAL_ENGINE_TEST_KEY", "held_out": False, "limit": 4,
                                        "max_new_tokens": 9, "grounded": True, "retrieval_k": 2}))
    assert main(["eval", "--run", str(run_dir), "--config", str(settings)]) == 0

    asked = answers_asked(eval_stub)
    assert {r["auth"] for r in eval_stub.requests} == {"Bearer sk-engine-secret-000"}
    plan = plan_evaluation(run_dir, load_eval_job(settings))
    retriever = Retriever(plan.kb, RetrievalSettings(k=2))
    expected = [list(i.messages) for i in plan.items]
    expected += [grounded_messages(i.messages, retriever.search(i.text)) for i in plan.items]
    for model in ("my-base", "stage1-lora", "stage2-lora"):
        mine = [r["body"]["messages"] for r in asked if r["body"]["model"] == model]
        assert sorted(map(json.dumps, mine)) == sorted(map(json.dumps, expected)), model
    assert 1 < eval_stub.max_in_flight <= 3

    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["engine"]["models"] == {"base": "my-base", "stage1": "stage1-lora", "stage2": "stage2-lora"}
    assert results["engine"]["api_key_env"] == "EVAL_ENGINE_TEST_KEY"  # the variable's name, never the key
    assert "sk-engine-secret-000" not in (run_dir / "eval" / "results.json").read_text()
    assert len(results["rubric_by_question"]) == 4 and results["grounded"]["models"].keys() == {"base", "stage1",
                                                                                                  "stage2"}
    for stage, gate in results["gate"].items():
        assert gate["verdict"] != "not gated" and "rubric accuracy" in gate["summary"]
    report = (run_dir / "eval" / "report.md").read_text()
    assert "## Rubric by question" in report and "## Grounded in the knowledge base" in report


# Failures: one line naming the server and the model

def test_a_server_that_is_down_or_lacks_an_adapter_is_one_line(run_dir, tmp_path, eval_stub, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once the socket is closed
    prompts = str(prompt_file(tmp_path))
    assert main(["eval", "--run", str(run_dir), "--questions", prompts, "--engine", "openai",
                 "--base-url", closed]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: engine openai: {closed}, model "
                                                         "'smollm2-135m-instruct' (base): ")
    assert not (run_dir / "eval" / "results.json").exists()

    eval_stub.unknown = {"demo/stage2"}
    assert main(["eval", "--run", str(run_dir), "--questions", prompts, "--engine", "openai",
                 "--base-url", url_of(eval_stub)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{url_of(eval_stub)}, model 'demo/stage2' (stage2): HTTP 404" in err
    assert "--lora-modules" in err and answers_asked(eval_stub) == []  # stopped before any answer was asked

    assert main(["eval", "--run", str(run_dir), "--questions", prompts, "--engine", "openai", "--base-url",
                 url_of(eval_stub), "--api-key-env", "EVAL_ENGINE_UNSET_KEY"]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: api_key_env: the environment variable EVAL_ENGINE_UNSET_KEY is not set"


@pytest.mark.parametrize("settings, message", [
    ({"engine": "openai"}, "base_url: engine openai needs the server's address"),
    ({"engine": "vllm"}, "engine: 'vllm' must be one of local, openai"),
    ({"engine": "openai", "base_url": "http://x/v1", "adapter_served_name": "{run}/{adapter}"},
     "adapter_served_name: '{run}/{adapter}' may name only {run} and {stage}"),
    ({"concurrency": 0}, "concurrency: must be at least 1"),
])
def test_engine_settings_are_checked_before_anything_runs(tmp_path, settings, message):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_eval_job(path)
