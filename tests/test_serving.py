"""trainer/hub/serving.py and `python -m trainer serve`: the vLLM and TGI commands for pushed adapters and for a run's
adapter folders, and the app's settings that point at the server they start."""

from __future__ import annotations

import shlex

import pytest
from run_folder import data_files, write_stage

from trainer.__main__ import main
from trainer.hub.serving import ServedAdapter, engine_commands, hub_commands, vllm_args
from trainer.hub.space_settings import load_space_config


def test_vllm_serves_each_adapter_under_its_name_with_a_rank_it_accepts():
    commands = engine_commands("mistralai/Mistral-7B-Instruct-v0.3", [ServedAdapter("stage2", "acme/demo-stage2")], 4)
    assert commands["vllm"] == ("vllm serve mistralai/Mistral-7B-Instruct-v0.3 --port 8000 \\\n  --enable-lora "
                                "--max-loras 1 --max-lora-rank 8 \\\n  --lora-modules stage2=acme/demo-stage2")
    assert commands["tgi"] == ("docker run --gpus all --shm-size 1g -p 8000:80 \\\n  -e LORA_ADAPTERS=acme/demo-stage2 "
                               "\\\n  ghcr.io/huggingface/text-generation-inference:latest "
                               "--model-id mistralai/Mistral-7B-Instruct-v0.3")
    assert vllm_args("b", [ServedAdapter("a", "o/a")], 33)[6:] == ["--max-loras", "1", "--max-lora-rank", "64",
                                                                  "--lora-modules", "a=o/a"]


def test_a_pinned_revision_is_downloaded_first_and_served_from_its_folder():
    commands, served = hub_commands("base/model", [("stage1", "acme/s1"), ("stage2", "acme/s2")], 16, "v1")
    assert [a.tgi_name for a in served] == ["stage1", "stage2"]
    for command in commands.values():
        assert command.startswith("hf download acme/s1 --revision v1 --local-dir adapters/stage1\n"
                                  "hf download acme/s2 --revision v1 --local-dir adapters/stage2\n")
    assert "--lora-modules stage1=adapters/stage1 stage2=adapters/stage2" in commands["vllm"]
    assert "-v $PWD/adapters/stage1:/data/stage1 -v $PWD/adapters/stage2:/data/stage2 " in commands["tgi"]
    assert "LORA_ADAPTERS=stage1=/data/stage1,stage2=/data/stage2" in commands["tgi"]


@pytest.fixture
def run_dir(tmp_path):
    train, test = data_files(tmp_path / "data")
    write_stage(tmp_path, f"stages.stage1.dataset.path={train}")
    write_stage(tmp_path, f"stages.stage2.dataset.path={train}", f"stages.stage2.dataset.eval_path={test}",
                "stages.stage2.dataset.kind=real", "stages.stage2.dataset.license=cc-by-4.0", stage="stage2")
    return tmp_path / "runs" / "demo"


def test_serve_prints_the_commands_for_the_run_folders_and_the_app_settings_that_load(run_dir, capsys):
    assert main(["serve", "--run", str(run_dir)]) == 0
    out = capsys.readouterr().out
    stage1, stage2 = (run_dir / s / "adapter" for s in ("stage1", "stage2"))
    assert f"--lora-modules demo/stage1={stage1.resolve()} demo/stage2={stage2.resolve()}" in out
    assert f"-v {stage1.resolve()}:/data/demo-stage1 " in out
    assert "LORA_ADAPTERS=demo/stage1=/data/demo-stage1,demo/stage2=/data/demo-stage2" in out
    app_line = out.split("# then the app, on the server above:\n", 1)[1].replace("\\\n", " ")
    words = shlex.split(app_line)
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    cfg = load_space_config(None, overrides)
    assert cfg.engine == "openai" and cfg.limits.concurrency == 16
    assert [(a.name, a.path) for a in cfg.adapters] == [("demo/stage1", str(stage1.resolve())),
                                                        ("demo/stage2", str(stage2.resolve()))]


def test_serve_start_runs_vllm_through_the_script_on_the_local_base_with_each_adapter(run_dir, capsys, monkeypatch):
    import subprocess

    from trainer.hub.serving import VLLM_SCRIPT

    started = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: started.append(args) or subprocess.CompletedProcess(
        args, 0))
    assert main(["serve", "--run", str(run_dir), "--start"]) == 0
    (args,) = started
    stage1, stage2 = (run_dir / s / "adapter" for s in ("stage1", "stage2"))
    assert args[:3] == ["bash", str(VLLM_SCRIPT), "serve"]
    assert args[args.index("--lora-modules") + 1:] == [f"demo/stage1={stage1.resolve()}",
                                                       f"demo/stage2={stage2.resolve()}"]
    assert args[args.index("--host") + 1] == "127.0.0.1" and "--enable-lora" in args
    assert "python app.py --set engine=openai" in capsys.readouterr().out
