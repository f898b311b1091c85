"""`python -m trainer push`: staged folders and cards (dry run), the gate, errors, retries, and round trips through a
local server that speaks the Hub's HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, launch_app, stop_app


from trainer.__main__ import main
from trainer.data.conversations import file_sha256
from trainer.hub.api import HubError, git_blob_sha1, with_retries


@pytest.fixture
def run_copy(short_demo_run, tmp_path) -> Path:
    """A private copy of the trained run, so a test may add eval results or change files."""
    dest = tmp_path / "runs" / short_demo_run.name
    shutil.copytree(short_demo_run, dest, ignore=shutil.ignore_patterns("checkpoints", "push"))
    return dest


def dry_run(run_dir: Path, *extra: str) -> Path:
    out = run_dir / "push"
    assert main(["push", "--run", str(run_dir), "--dry-run", "--namespace", "acme", "--out", str(out), *extra]) == 0
    return out


def test_dry_run_stages_complete_cards_for_each_adapter(run_copy, capsys):
    from huggingface_hub import ModelCard

    out = dry_run(run_copy)
    printed = capsys.readouterr().out
    assert "dry run: nothing was uploaded" in printed
    for stage in ("stage1", "stage2"):
        folder = out / "models" / "acme" / f"demo-{stage}"
        for name in ("README.md", "adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                     "chat_template.jinja", "loss.png", "lineage.json", "metrics.json", "resolved_config.yaml"):
            assert (folder / name).is_file(), f"{stage}: {name}"
        assert not (folder / "training_args.bin").exists()
        assert file_sha256(folder / "adapter_model.safetensors") == \
            file_sha256(run_copy / stage / "adapter" / "adapter_model.safetensors")
        card = ModelCard.load(folder / "README.md")
        data = card.data.to_dict()
        assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
        assert data["license"] == "apache-2.0" and data["language"] == ["en"]
        assert {"lora", "qlora", "trl", "study-abroad"} <= set(data["tags"])
        assert f"acme/demo-{stage}-data" in data["datasets"]
        metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
        recorded = json.loads((run_copy / stage / "metrics.json").read_text())
        assert metrics["loss"] == round(recorded["eval_loss_last"], 4)
        text = card.text
        assert f'PeftModel.from_pretrained(base, "acme/demo-{stage}")' in text
        assert "BitsAndBytesConfig(load_in_4bit=True" in text and "![Train and eval loss](loss.png)" in text
        assert "**Not evaluated.**" in text
        assert "## Limitations" in text and "## Intended use" in text
        lineage = json.loads((run_copy / stage / "lineage.json").read_text())
        assert lineage["adapter_sha256"] in text
        assert "| learning rate |" in text and "| eval_loss_last |" in text

    stage2 = ModelCard.load(out / "models" / "acme" / "demo-stage2" / "README.md").text
    s1_sha = json.loads((run_copy / "stage1" / "lineage.json").read_text())["adapter_sha256"]
    assert "[acme/demo-stage1](https://huggingface.co/acme/demo-stage1)" in stage2 and s1_sha in stage2
    assert "not fact-checked" in ModelCard.load(out / "models" / "acme" / "demo-stage1" / "README.md").text


def test_dry_run_exports_the_exact_training_rows_with_dataset_cards(run_copy):
    from huggingface_hub import DatasetCard

    from trainer.data.conversations import content_hash

    out = dry_run(run_copy)
    for stage, kind, license_ in (("stage1", "machine-generated", "apache-2.0"),
                                  ("stage2", "expert-generated", "cc-by-4.0")):
        folder = out / "datasets" / "acme" / f"demo-{stage}-data"
        split = json.loads((run_copy / stage / "split.json").read_text())
        for name, key in (("train", "train"), ("test", "eval")):
            rows = [json.loads(line) for line in (folder / "data" / f"{name}.jsonl").read_text().splitlines()]
            assert [content_hash(r["messages"]) for r in rows] == [r["sha256"] for r in split[key]]
        card = DatasetCard.load(folder / "README.md").data.to_dict()
        assert card["license"] == license_ and card["task_categories"] == ["text-generation"]
        assert card["language"] == ["en"] and card["size_categories"] == ["n<1K"]
        assert kind in card["annotations_creators"]
        assert card["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train.jsonl"}
        assert card["source_datasets"] == ["original"]  # the demo's seed data is written for this project
        assert "&id" not in (folder / "README.md").read_text()  # no YAML anchors


def test_dry_run_space_points_at_the_pushed_adapters(run_copy, capsys):
    from huggingface_hub import SpaceCard

    from trainer.hub.space_settings import load_space_config

    out = dry_run(run_copy)
    assert "[push] Space hardware t4-small (suggested_hardware: t4-small): a T4 (compute capability 7.5)" in \
        capsys.readouterr().out
    space = out / "spaces" / "acme" / "demo-space"
    for name in ("app.py", "requirements.txt", "space/engine.py", "trainer/train/model.py",
                 "trainer/inference/model.py", "trainer/train/chat_templates/chatml.jinja", "README.md"):
        assert (space / name).is_file(), name
    settings = load_space_config(space / "space_config" / "space.yaml")  # what the app will read
    assert settings.base_model == "smollm2-135m-instruct" and settings.discover_runs is False
    assert [(a.name, a.repo) for a in settings.adapters] == [("stage1", "acme/demo-stage1"),
                                                             ("stage2", "acme/demo-stage2")]
    header = SpaceCard.load(space / "README.md").data
    assert header.sdk == "gradio" and header.app_file == "app.py"
    assert {"acme/demo-stage1", "acme/demo-stage2"} <= set(header.models)
    assert {"acme/demo-stage1-data", "acme/demo-stage2-data"} <= set(header.datasets)

    out = dry_run(run_copy, "--space-hardware", "zero-gpu")  # what push says, and writes, for ZeroGPU
    assert "[push] Space hardware zero-gpu (suggested_hardware: zero-a10g): ZeroGPU" in capsys.readouterr().out
    assert SpaceCard.load(space / "README.md").data.suggested_hardware == "zero-a10g"
    assert "torch==2.11.0" in (space / "requirements.txt").read_text().splitlines()
    with pytest.raises(SystemExit) as bad:
        main(["push", "--run", str(run_copy), "--dry-run", "--space-hardware", "a100"])
    assert bad.value.code == 2 and "invalid choice: 'a100'" in capsys.readouterr().err


def test_gate_refuses_an_adapter_worse_than_its_base_unless_forced(run_copy, capsys):
    from huggingface_hub import ModelCard

    (run_copy / "eval").mkdir()
    (run_copy / "eval" / "results.json").write_text(json.dumps({"gate": {
        "stage1": {"passed": True, "summary": "rubric 0.62 vs base 0.55"},
        "stage2": {"passed": False, "summary": "rubric 0.41 vs base 0.55"}}}))
    out = dry_run(run_copy)
    printed = capsys.readouterr().out
    assert "refused stage2: it failed the comparison with its base (rubric 0.41 vs base 0.55)" in printed
    assert not (out / "models" / "acme" / "demo-stage2").exists()
    assert "**Passed** the comparison with its base model: rubric 0.62" in \
        ModelCard.load(out / "models" / "acme" / "demo-stage1" / "README.md").text

    out = dry_run(run_copy, "--force")
    text = ModelCard.load(out / "models" / "acme" / "demo-stage2" / "README.md").text
    assert "**Failed** the comparison with its base model: rubric 0.41 vs base 0.55" in text
    assert "published anyway (`--force`)" in text


def test_changed_training_data_fails_the_push_instead_of_publishing_the_adapter_alone(run_copy, capsys):
    lineage = json.loads((run_copy / "stage1" / "lineage.json").read_text())
    data_file = Path(next(iter(lineage["datasets"][0]["file_sha256"])))
    original = data_file.read_bytes()
    out = run_copy / "push"
    try:
        data_file.write_bytes(original + b"\n")
        assert main(["push", "--run", str(run_copy), "--dry-run", "--namespace", "acme", "--out", str(out)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"error: {data_file}: changed since stage1 was trained (sha256 differs from ")
        assert err.endswith("or push without the data (--no-datasets)")
        assert not out.exists() and "[push] staged" not in captured.out  # nothing half-staged

        dry_run(run_copy, "--no-datasets")  # leaving the data out on purpose still publishes the adapter
        assert (out / "models" / "acme" / "demo-stage1").is_dir() and not (out / "datasets").exists()
    finally:
        data_file.write_bytes(original)


@pytest.fixture
def eval_path_run(run_copy, tmp_path) -> tuple[Path, Path, Path]:
    """The demo run with stage 1's records pointing at a training file and a separate eval file, as training on
    them with `dataset.eval_path` writes them (tests/run_folder.py)."""
    from run_folder import data_files, retarget_stage

    train, test = data_files(tmp_path / "eval-path-data")
    retarget_stage(run_copy / "stage1", train, test)
    return run_copy, train, test


def test_a_stage_with_an_eval_file_exports_the_rows_of_both_files(eval_path_run):
    from trainer.data.conversations import content_hash

    run_dir, train, test = eval_path_run
    out = dry_run(run_dir, "--stage", "stage1", "--no-space")
    folder = out / "datasets" / "acme" / "demo-stage1-data"
    split = json.loads((run_dir / "stage1" / "split.json").read_text())
    for name, key, source in (("train", "train", train), ("test", "eval", test)):
        rows = [json.loads(line) for line in (folder / "data" / f"{name}.jsonl").read_text().splitlines()]
        assert [content_hash(r["messages"]) for r in rows] == [r["sha256"] for r in split[key]] == \
            [content_hash(json.loads(line)["messages"]) for line in source.read_text().splitlines()]
    assert "acme/demo-stage1-data" in (out / "models" / "acme" / "demo-stage1" / "README.md").read_text()


def test_a_changed_eval_file_fails_the_push_of_its_stage(eval_path_run, capsys):
    run_dir, _, test = eval_path_run
    test.write_text(test.read_text() + "\n")
    out = run_dir / "push"
    assert main(["push", "--run", str(run_dir), "--dry-run", "--namespace", "acme", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {test}: changed since stage1 was trained")
    assert not out.exists()


@pytest.mark.parametrize("value, offline", [(None, False), ("", False), ("0", False), ("false", False),
                                            ("1", True), ("on", True), ("Yes", True), ("TRUE", True)])
def test_offline_mode_reads_the_variable_as_huggingface_hub_does(monkeypatch, value, offline):
    from huggingface_hub.constants import _is_true

    from trainer.hub.api import offline_mode

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert offline_mode() is offline is _is_true(value or None)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # the fallback huggingface_hub reads when HF_HUB_OFFLINE is empty
    assert offline_mode() is (offline or not value)


def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["push", "--run", str(tmp_path / "nope"), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run directory"
    (tmp_path / "empty").mkdir()
    assert main(["push", "--run", str(tmp_path / "empty"), "--dry-run"]) == 2
    assert "no finished stage" in capsys.readouterr().err


def test_missing_token_is_a_clear_error(run_copy, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    assert main(["push", "--run", str(run_copy), "--namespace", "acme"]) == 2
    assert "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err


def _http_error(status, headers=None):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "http://hub/commit"))
    return HfHubHTTPError(f"{status} error", response=response)


def test_retries_honour_retry_after_and_back_off_on_server_errors():
    waits: list[float] = []
    outcomes = [_http_error(429, {"Retry-After": "3"}), _http_error(503), _http_error(500), "ok"]

    def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert with_retries("commit", call, sleep=waits.append) == "ok"
    assert waits == [3.0, 1.0, 2.0]
    with pytest.raises(HubError, match="commit: the Hub refused the token \\(HTTP 401\\)"):
        with_retries("commit", lambda: (_ for _ in ()).throw(_http_error(401)), sleep=waits.append)
    with pytest.raises(HubError, match="HTTP 500"):
        with_retries("commit", lambda: (_ for _ in ()).throw(_http_error(500)), sleep=lambda s: None, attempts=2)


def test_git_blob_sha1_matches_git():
    out = subprocess.run(["git", "hash-object", "--stdin"], input=b"hello\n", capture_output=True, check=True)
    assert git_blob_sha1(b"hello\n") == out.stdout.decode().strip()


# Round trips through the local Hub server

def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def hub_env(hub, tmp_path: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update({"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_TOKEN": token or hub.token,
                "HF_HUB_DISABLE_TELEMETRY": "1"})
    return env


def run_python(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_push_round_trips_through_a_hub_server(run_copy, hub, tmp_path):
    env = hub_env(hub, tmp_path)
    first = run_cli(["push", "--run", str(run_copy)], env)
    assert first.returncode == 0, first.stderr[-3000:]
    repos = [("model", "tester/demo-stage1"), ("model", "tester/demo-stage2"), ("dataset", "tester/demo-stage1-data"),
             ("dataset", "tester/demo-stage2-data"), ("space", "tester/demo-space")]
    commits = {r: hub.commits(*r) for r in repos}
    assert all(commits.values())
    assert hub.files("model", "tester/demo-stage2")["adapter_model.safetensors"] == \
        (run_copy / "stage2" / "adapter" / "adapter_model.safetensors").read_bytes()

    again = run_cli(["push", "--run", str(run_copy)], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("unchanged") == len(repos)
    assert {r: hub.commits(*r) for r in repos} == commits  # re-pushing unchanged content: no new commit

    loaded = run_python(f"""
import json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from huggingface_hub import ModelCard, DatasetCard
from datasets import load_dataset
from safetensors.torch import load_file
from trainer.train.demo_model import demo_model_path
base = AutoModelForCausalLM.from_pretrained(str(demo_model_path()))
model = PeftModel.from_pretrained(base, "tester/demo-stage2")
local = load_file("{run_copy}/stage2/adapter/adapter_model.safetensors")
state = {{k: v for k, v in model.state_dict().items() if "lora_" in k}}
same = all(any(torch.equal(v, state[s]) for s in state if s.replace(".default", "") == k) for k, v in local.items())
ds = load_dataset("tester/demo-stage2-data")
card = ModelCard.load("tester/demo-stage2")
dcard = DatasetCard.load("tester/demo-stage2-data", repo_type="dataset")
print(json.dumps({{"same": same, "n_local": len(local), "train": ds["train"].num_rows, "test": ds["test"].num_rows,
                  "first": ds["train"][0]["messages"], "base_model": card.data.base_model,
                  "dlicense": dcard.data.license}}))
""", env)
    assert loaded["same"] and loaded["n_local"] > 0
    split = json.loads((run_copy / "stage2" / "split.json").read_text())
    assert (loaded["train"], loaded["test"]) == (len(split["train"]), len(split["eval"]))
    assert loaded["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and loaded["dlicense"] == "cc-by-4.0"

    # the stage-2 card quotes stage 1's commit on the Hub
    card = hub.files("model", "tester/demo-stage2")["README.md"].decode()
    assert f"@ `{commits[('model', 'tester/demo-stage1')][-1]}`" in card


def test_push_to_a_branch_private(run_copy, hub, tmp_path):
    env = hub_env(hub, tmp_path)
    result = run_cli(["push", "--run", str(run_copy), "--stage", "stage1", "--revision", "v1", "--private",
                      "--no-space", "--no-datasets", "--namespace", "tester"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.commits("model", "tester/demo-stage1", "v1")
    assert "README.md" in hub.files("model", "tester/demo-stage1", "v1")
    assert 'revision="v1"' in hub.files("model", "tester/demo-stage1", "v1")["README.md"].decode()


def test_push_retries_server_errors_and_rate_limits(run_copy, hub, tmp_path):
    env = hub_env(hub, tmp_path)
    hub.fail_next("POST", r"/api/models/tester/demo-stage1/commit/", 500)
    hub.fail_next("POST", r"/api/repos/create", 429, headers={"Retry-After": "1"})
    result = run_cli(["push", "--run", str(run_copy), "--stage", "stage1", "--no-space", "--no-datasets"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.commits("model", "tester/demo-stage1")
    statuses = [(m, s) for m, p, s in hub.requests if "/commit/" in p or "/repos/create" in p]
    assert ("POST", 500) in statuses and ("POST", 429) in statuses


def test_a_rejected_token_is_one_line_and_no_file_holds_the_token(run_copy, hub, tmp_path):
    env = hub_env(hub, tmp_path, token="hf_wrong_token_that_the_server_rejects_000")
    result = run_cli(["push", "--run", str(run_copy), "--namespace", "tester"], env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "HTTP 401" in result.stderr and "Traceback" not in result.stderr

    ok = run_cli(["push", "--run", str(run_copy)], hub_env(hub, tmp_path))
    assert ok.returncode == 0
    for token in (hub.token, "hf_wrong_token_that_the_server_rejects_000"):
        assert token not in result.stdout + result.stderr + ok.stdout + ok.stderr
        for root in (run_copy, tmp_path / "hf-home", hub.root):
            for path in Path(root).rglob("*"):
                if path.is_file():
                    assert token.encode() not in path.read_bytes(), f"token found in {path}"


def test_the_pushed_space_downloaded_from_the_hub_starts_and_answers_with_sources(run_copy, hub, tmp_path,
                                                                                   monkeypatch):
    """As a user would: push, download the Space repo into a clean folder, `python app.py` there as a Space runs it
    (no access to this repository: no PYTHONPATH, its own folder as the working directory), adapters from the Hub
    server; grounding and the answer check are on by default, so the knowledge base must have come with it."""
    from gradio_client import Client
    from huggingface_hub import constants, snapshot_download

    from space.display import is_note, message_text
    from trainer.hub.push import run_push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the emulator has no Xet CAS
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    run_push(run_copy, endpoint=hub.endpoint, datasets=False, out_dir=tmp_path / "staged")
    space = Path(snapshot_download("tester/demo-space", repo_type="space", endpoint=hub.endpoint, token=hub.token,
                                   local_dir=tmp_path / "downloaded" / "demo-space"))
    assert not space.resolve().is_relative_to(REPO.resolve()) and (space / "data" / "kb" / "rules.yaml").is_file()

    env = {k: v for k, v in hub.client_env(home=tmp_path / "hf-home").items() if k != "PYTHONPATH"}
    proc, url = launch_app(None, cwd=space, whole_env=env, timeout=180)
    try:
        client = Client(url, verbose=False)
        history, _ = client.predict("Is health insurance compulsory for international students in Germany?", [],
                                    "stage2", True, "You are a careful study-abroad counsellor.", 0, 0.9, 16,
                                    api_name="/chat")
    finally:
        stop_app(proc)
    answer = [m for m in history if not is_note(m)][-1]
    assert answer["role"] == "assistant" and message_text(answer).strip()
    sources = {m["metadata"]["title"]: message_text(m) for m in history if is_note(m)}["Sources from the knowledge base"]
    assert sources.startswith("1. [") and "[Germany: health insurance](http" in sources
