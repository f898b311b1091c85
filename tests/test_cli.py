"""The command line: instant help, `validate`, and one clear line for every error a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import DATA, REPO, write_jsonl

from trainer.__main__ import main


def test_help_is_instant_and_imports_no_heavy_library():
    code = ("import sys, trainer.__main__ as cli\n"
            "try:\n    cli.main(['train', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout and "--set" in out.stdout
    assert "HEAVY []" in out.stdout


def test_validate_demo_config_checks_template_and_data(capsys, demo_model_dir):
    assert main(["validate", "--config", str(REPO / "configs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "chat template: chatml training template renders identically" in out
    assert "stage stage1: data/seed/stage1_grounded.jsonl: 68 rows read (messages), 68 kept, 0 bad" in out
    assert "stage stage2: data/seed/stage2_student.jsonl: 39 rows read (messages), 39 kept, 0 bad" in out
    assert "train tokens" in out
    assert out.strip().endswith("valid")


def test_validate_paper_config_passes_offline_and_says_what_it_could_not_check(capsys):
    assert main(["validate", "--config", str(REPO / "configs" / "paper.yaml")]) == 0
    out = capsys.readouterr().out
    assert "config" in out and "base mistralai/Mistral-7B-Instruct-v0.3" in out
    assert "not checked: stages.stage1.dataset millat/StudyAbroadGPT-Dataset (Hub dataset, offline)" in out


def test_validate_reports_bad_rows_by_file_line_and_rule(tmp_path, capsys, demo_model_dir):
    rows = [json.loads(line) for line in (DATA / "short_dialogues.jsonl").read_text().splitlines()]
    data = write_jsonl(tmp_path / "d.jsonl",
                       rows[:8] + [{"messages": [{"role": "user", "content": "only a question"}]}])
    code = main(["validate", "--config", str(REPO / "configs" / "demo.yaml"),
                 "--set", f"stages.stage1.dataset.path={data}", "--set", "stages.stage1.dataset.max_bad_fraction=0.2"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"skipped {data}:9: no assistant turn" in out

    code = main(["validate", "--config", str(REPO / "configs" / "demo.yaml"),
                 "--set", f"stages.stage1.dataset.path={data}"])
    captured = capsys.readouterr()
    assert code == 2  # a data failure is a user error: exit 2, one summary line, the rows below it
    assert captured.err.splitlines() == [f"error: stage stage1: {data}: 1 of 9 rows are bad (11%, limit 10%):",
                                         f"  {data}:9: no assistant turn: the conversation has no answer to learn from"]
    assert "stage stage2: data/seed/stage2_student.jsonl: 39 rows read" in captured.out


@pytest.mark.parametrize("argv, message", [
    (["--set", "stages.stage2.learnin_rate=1e-4"],
     "stages.stage2.learnin_rate: unknown key (did you mean 'learning_rate'?)"),
    (["--set", "lora.r=many"], "lora.r: expected an integer"),
    (["--set", "stages.stage1.dataset.path=nowhere/missing.jsonl"], "nowhere/missing.jsonl: no such file or folder"),
    (["--stage", "stage3"], "no stage named 'stage3'"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    code = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.startswith("error: ")


def test_missing_config_file(capsys):
    assert main(["validate", "--config", "configs/nope.yaml"]) == 2
    assert "configs/nope.yaml: config file not found" in capsys.readouterr().err


def test_stage2_alone_checks_its_parent_when_it_starts(tmp_path, capsys, demo_model_dir):
    code = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--stage", "stage2",
                 "--set", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    adapter = tmp_path / "demo" / "stage1" / "adapter"
    assert err.strip() == (f"error: stages.stage2.init_from is 'stage1', but {adapter} holds no finished adapter; "
                           "train it first (--stage stage1)")


# validate and HF_HUB_OFFLINE

class _Reachable:
    def close(self) -> None:
        pass


@pytest.mark.parametrize("value, offline", [("0", False), ("false", False), ("", False), ("1", True),
                                            ("ON", True), ("yes", True), ("True", True)])
def test_validate_reads_hf_hub_offline_as_huggingface_hub_does(value, offline, monkeypatch, capsys,
                                                               tiny_mistral_dir):
    """HF_HUB_OFFLINE=0 means online: with the Hub reachable, validate checks the Hub dataset instead of skipping
    it. (The Hub itself is stood in for: the socket probe answers, and the dataset rows come from the sample.)"""
    import socket

    import trainer.data.conversations

    sample = [json.loads(line) for line in (DATA / "studyabroadgpt_sample.jsonl").read_text().splitlines()]
    asked = []

    def read_hub(spec):
        asked.append(spec.path)
        for i, row in enumerate(sample[:4], start=1):
            yield f"{spec.path}[{spec.split}]: row {i}", row

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: _Reachable())
    monkeypatch.setattr(trainer.data.conversations, "read_hub", read_hub)
    code = main(["validate", "--config", str(REPO / "configs" / "paper.yaml"),
                 "--set", f"model.name={tiny_mistral_dir}", "--set", "max_length=100000",
                 "--set", f"stages.stage2.dataset.path={DATA / 'short_dialogues.jsonl'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    skipped = "not checked: stages.stage1.dataset millat/StudyAbroadGPT-Dataset (Hub dataset, offline)"
    if offline:
        assert skipped in out and not asked
    else:
        assert skipped not in out and asked == ["millat/StudyAbroadGPT-Dataset"]
        assert "stage stage1: millat/StudyAbroadGPT-Dataset: 4 rows read (sharegpt), 4 kept" in out
        assert out.strip().endswith("valid")


# One typed loader for the configs and the rest; the import circle is gone

def test_config_imports_only_typed_yaml_the_device_rule_and_the_data_settings():
    import ast

    def tool_imports(module: str) -> set[str]:
        tree = ast.parse((REPO / "trainer" / "train" / f"{module}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        return {m for m in imported if m and m.split(".")[0] == "trainer"}

    # the device rule (precision and kernels) sits beside the config; a stage's data settings one floor down
    assert tool_imports("config") == {"trainer.typed_yaml", "trainer.train.device", "trainer.data.settings"}
    assert tool_imports("device") == {"trainer.typed_yaml"}
    out = subprocess.run([sys.executable, "-c", "import trainer.train.config, trainer.data.conversations"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# generate and eval: a YAML file, then --set, then the flags typed on the command line

def test_generate_reads_its_file_then_set_then_typed_flags(tmp_path, capsys):
    settings = tmp_path / "synth.yaml"
    settings.write_text(f"n: 0\nkb: {tmp_path / 'kb-from-file'}\n", encoding="utf-8")

    def error(*argv: str) -> str:
        assert main(["generate", "--config", str(settings), *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return err.strip()

    assert error() == f"error: {settings}: n: must be at least 1, got 0"
    # --n wins over the file; the file's kb is used (the command stops there, before any model loads)
    assert error("--n", "3") == f"error: {tmp_path / 'kb-from-file'}: knowledge base folder not found"
    assert error("--n", "3", "--set", f"kb={tmp_path / 'kb-from-set'}") == \
        f"error: {tmp_path / 'kb-from-set'}: knowledge base folder not found"
    assert error("--set", "n=0", "--n", "3", "--kb", str(tmp_path / "kb-from-flag")) == \
        f"error: {tmp_path / 'kb-from-flag'}: knowledge base folder not found"
    settings.write_text("nn: 3\n", encoding="utf-8")
    assert error() == f"error: {settings}: nn: unknown key (did you mean 'n'?)"
    settings.write_text("exchanges: [5, 3]\n", encoding="utf-8")
    assert error() == f"error: {settings}: exchanges: need 1 <= MIN <= MAX <= 6, got --exchanges 5 3"
    assert main(["generate", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: generate settings not found"


def test_eval_reads_its_file_and_an_untyped_flag_does_not_mask_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    settings = tmp_path / "eval.yaml"
    settings.write_text("limit: 5\nbatch_size: 0\n", encoding="utf-8")
    run = ["eval", "--run", str(tmp_path / "empty"), "--config", str(settings)]
    assert main(run) == 2  # --batch-size's default (8) does not hide the file's 0
    assert capsys.readouterr().err.strip() == f"error: {settings}: batch_size: must be at least 1, got 0"
    assert main(run + ["--batch-size", "4", "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {settings}: limit: must be at least 1 (or null for all), got 0"
    assert main(run + ["--batch-size", "4"]) == 2  # settings accepted: the run is what is missing
    assert "no adapters to evaluate" in capsys.readouterr().err
    quick = REPO / "configs" / "eval" / "quick.yaml"
    assert main(["eval", "--run", str(tmp_path / "empty"), "--config", str(quick)]) == 2
    assert "no adapters to evaluate" in capsys.readouterr().err


def test_job_flags_take_their_type_switch_and_choices_from_the_settings_fields():
    from trainer.__main__ import _typed_flags, build_parser
    from trainer.jobs import EvalJob, SynthJob

    parser = build_parser()
    args = parser.parse_args(["eval", "--run", "r", "--no-4bit", "--held-out", "--no-contamination", "--grounded",
                              "--no-send-repetition-penalty", "--engine", "openai", "--margin", "0.1",
                              "--max-new-tokens", "64", "--base-url", "http://127.0.0.1:8000/v1"])
    assert _typed_flags(args, EvalJob) == {
        "run": "r", "load_in_4bit": False, "held_out": True, "contamination": False, "grounded": True,
        "send_repetition_penalty": False, "engine": "openai", "margin": 0.1, "max_new_tokens": 64,
        "base_url": "http://127.0.0.1:8000/v1"}
    assert _typed_flags(parser.parse_args(["eval", "--run", "r", "--no-held-out"]), EvalJob) == {"run": "r",
                                                                                               "held_out": False}
    assert _typed_flags(parser.parse_args(["eval", "--run", "r"]), EvalJob) == {"run": "r"}  # the rest: the file
    args = parser.parse_args(["generate", "--exchanges", "2", "3", "--judge", "--n", "5", "--temperature", "0.2"])
    assert _typed_flags(args, SynthJob) == {"exchanges": [2, 3], "judge": True, "n": 5, "temperature": 0.2}
    for wrong in (["eval", "--run", "r", "--engine", "vllm"], ["eval", "--run", "r", "--limit", "few"],
                  ["generate", "--exchanges", "4"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)


def test_the_bitsandbytes_kernel_notice_is_silenced_and_other_warnings_are_not(tmp_path):
    """bitsandbytes logs, at every import on CPUs with AVX512-BF16, that it could not fetch an optional Hub kernel.
    This machine's CPU does not make it log, so the test logs the same record the way bitsandbytes does."""
    code = ("import logging, sys\n"
            "from trainer.__main__ import main\n"
            f"main(['audit', {str(DATA / 'short_dialogues.jsonl')!r}, '--no-kb'])\n"
            "log = logging.getLogger('bitsandbytes.backends.cpu.ops')\n"
            "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you '\n"
            "            'already `pip install kernels` and the kernels >= 0.11.1', \"No module named 'kernels'\")\n"
            "log.warning('another bitsandbytes warning')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "another bitsandbytes warning" in out.stderr
    assert "gemm_4bit_forward" not in out.stderr and "kernels" not in out.stderr


def test_every_command_takes_its_flags_from_its_settings_dataclass():
    import argparse
    import dataclasses

    from trainer.__main__ import SETTINGS_FILES, build_parser, commands
    from trainer.jobs import AuditJob, EvalJob

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(commands()) and len(commands()) == 10
    for name, command in sub.choices.items():
        fields = {f.name for f in dataclasses.fields(commands()[name][0])} - {"source"}
        flags = {a.dest for a in command._actions if a.dest != "help"}
        settings_file = {"config", "overrides"} if name in SETTINGS_FILES else set()
        assert flags - settings_file == fields, (name, (flags - settings_file) ^ fields)
    assert AuditJob.judge_max_tokens == EvalJob.judge_max_tokens  # one default for the judge's answer length
