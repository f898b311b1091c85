"""trainer/hub/serving.py and `python -m trainer serve`: the vLLM and TGI commands for pushed adapters and for a run's
adapter folders, and the app's settings that point at the server they start."""

from __future__ import annotations

import shlex

import pytest
from run_folder import data_files, write_stage

from trainer.__main__ import main
from trainer.hub.serving import ServedAdapter, engine_commands, hub_commands, local_vllm_command, vllm_args
from trainer.train.device import DeviceInfo, named_gpu
from trainer.hub.space_settings import load_space_config


def test_vllm_serves_each_adapter_under_its_name_with_a_rank_it_accepts():
    commands = engine_commands("mistralai/Mistral-7B-Instruct-v0.3", [ServedAdapter("stage2", "acme/demo-stage2")], 4,
                               device=named_gpu("a10g"))
    assert commands["vllm"] == ("vllm serve mistralai/Mistral-7B-Instruct-v0.3 --port 8000 --dtype bfloat16 \\\n  "
                                "--enable-lora --max-loras 1 --max-lora-rank 8 \\\n  --lora-modules stage2=acme/demo-stage2")
    assert commands["tgi"] == ("docker run --gpus all --shm-size 1g -p 8000:80 \\\n  -e LORA_ADAPTERS=acme/demo-stage2 "
                               "\\\n  ghcr.io/huggingface/text-generation-inference:latest "
                               "--model-id mistralai/Mistral-7B-Instruct-v0.3 --dtype bfloat16")
    assert vllm_args("b", [ServedAdapter("a", "o/a")], 33)[8:] == ["--max-loras", "1", "--max-lora-rank", "64",
                                                                  "--lora-modules", "a=o/a"]


@pytest.mark.parametrize("card, vllm, tgi", [("t4", "half", "float16"), ("p100", "half", "float16"),
                                             ("v100", "half", "float16"), ("l4", "bfloat16", "bfloat16"),
                                             ("a100-80gb", "bfloat16", "bfloat16"), ("zero-gpu", "bfloat16", "bfloat16")])
def test_the_base_dtype_follows_the_precision_rule_of_the_card(card, vllm, tgi):
    """No bfloat16 below compute capability 8.0: a T4's vLLM would otherwise take bfloat16 from the base's config."""
    commands = engine_commands("base/model", [ServedAdapter("a", "o/a")], 8, device=named_gpu(card))
    assert f"vllm serve base/model --port 8000 --dtype {vllm} " in commands["vllm"]
    assert commands["tgi"].endswith(f"--model-id base/model --dtype {tgi}")
    assert not any(line.startswith("#") for c in commands.values() for line in c.splitlines())
    args = vllm_args("base/model", [ServedAdapter("a", "o/a")], 8, named_gpu(card))
    assert args[args.index("--dtype") + 1] == vllm


def test_commands_for_a_gpu_not_known_here_say_how_to_switch_an_older_card_to_float16():
    commands = engine_commands("base/model", [ServedAdapter("a", "o/a")], 8)
    note, command = commands["vllm"].split("\n", 1)
    assert note.startswith("# --dtype bfloat16 needs compute capability 8.0+") and "write --dtype half" in note
    assert command.startswith("vllm serve base/model --port 8000 --dtype bfloat16 ")
    assert "write --dtype float16" in commands["tgi"].splitlines()[0]
    cpu = DeviceInfo("cpu", "cpu")  # vLLM's CPU build (`serve --start` here) picks its own dtype
    assert "--dtype" not in local_vllm_command("m", [ServedAdapter("a", "o/a")], 8, device=cpu)
    assert "--dtype half" in " ".join(local_vllm_command("m", [], 8, device=named_gpu("t4")))


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


@pytest.mark.parametrize(("card", "vllm", "tgi"), [("t4", "--dtype half", "--dtype float16"),
                                                  ("p100", "--dtype half", "--dtype float16"),
                                                  ("a100-80gb", "--dtype bfloat16", "--dtype bfloat16")])
def test_serve_for_a_named_card_prints_its_dtype(run_dir, capsys, card, vllm, tgi):
    assert main(["serve", "--run", str(run_dir), "--gpu", card]) == 0
    vllm_part, tgi_part = capsys.readouterr().out.split("# TGI\n", 1)
    assert vllm in vllm_part and tgi in tgi_part.split("# then the app")[0]


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
    assert "--dtype" not in args  # the CPU build of vLLM on this CPU picks its own
    assert "python app.py --set engine=openai" in capsys.readouterr().out
