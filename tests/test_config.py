"""trainer/train/config.py: every shipped YAML builds real TRL/PEFT/transformers configs; inheritance, overrides and
the error messages a user sees for a wrong key, type or value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from trainer.typed_yaml import ConfigError
import trainer.train.config as config
from trainer.train.config import build_lora_config, build_quantization_config, build_sft_config, dump_config, load_config
from trainer.typed_yaml import parse_override

SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ALL_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# A two-stage pipeline in the shape of the shipped ones. `1e-4` (no dot) is deliberately left as PyYAML reads it:
# a string, which the loader must still turn into a float.
TWO_STAGES = """\
name: test
seed: 7
lora:
  r: 8
  alpha: 16
  target_modules: [q_proj, v_proj]
training:
  learning_rate: 3.0e-4
  max_grad_norm: 0.5
  gradient_accumulation_steps: 4
  optim: adamw_torch
stages:
  stage1:
    dataset:
      path: data/one.jsonl
    num_train_epochs: 1
  stage2:
    init_from: stage1
    dataset:
      path: data/two.jsonl
      eval_fraction: 0.25
    learning_rate: 1e-4
    gradient_accumulation_steps: 8
"""


def write_config(tmp_path: Path, text: str = TWO_STAGES, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file first
    return message


# Every shipped config

def test_shipped_configs_are_found():
    assert REPO / "configs" / "demo.yaml" in SHIPPED_CONFIGS


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_follows_native_bfloat16(native):
    import torch

    from trainer.train.device import DeviceInfo
    from trainer.train.model import base_dtypes

    cpu = DeviceInfo("cpu", "cpu", cpu_native_bf16=native)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    precision, dtype = base_dtypes(cfg.quantization, config.pipeline_precision(cfg, cpu), cpu)
    bnb = build_quantization_config(cfg.quantization, dtype)
    sft = build_sft_config(cfg, "stage1", None, device=cpu)
    assert bnb.bnb_4bit_compute_dtype == (torch.bfloat16 if native else torch.float32)
    assert (sft.bf16, sft.fp16) == (native, False)
    assert precision.name == ("bf16" if native else "fp32")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_builds_trl_peft_and_bnb_configs(path, tmp_path):
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    cfg = load_config(path)
    assert cfg.stages, f"{path.name} defines no stages"
    for name, st in cfg.stages.items():
        sft = build_sft_config(cfg, name, tmp_path / name)
        assert isinstance(sft, SFTConfig)
        assert sft.output_dir == str(tmp_path / name)
        assert sft.learning_rate == st.learning_rate
        assert sft.num_train_epochs == st.num_train_epochs
        assert sft.warmup_steps == st.warmup_ratio
        assert sft.per_device_train_batch_size == st.per_device_train_batch_size
        assert sft.gradient_accumulation_steps == st.gradient_accumulation_steps
        assert sft.optim == st.optim
        assert sft.lr_scheduler_type == st.lr_scheduler_type
        assert sft.max_grad_norm == st.max_grad_norm
        assert sft.seed == cfg.seed
        assert sft.max_length == (None if st.padding_free else cfg.max_length)
        assert sft.assistant_only_loss is True
        assert sft.packing is False

    lora = build_lora_config(cfg)
    assert isinstance(lora, LoraConfig)
    assert lora.r == cfg.lora.r
    assert lora.lora_alpha == cfg.lora.alpha
    assert lora.lora_dropout == cfg.lora.dropout
    assert lora.bias == cfg.lora.bias
    assert set(lora.target_modules) == set(cfg.lora.target_modules)
    assert lora.task_type == "CAUSAL_LM"

    from trainer.train.model import base_dtypes

    _, dtype = base_dtypes(cfg.quantization, config.pipeline_precision(cfg))
    bnb = build_quantization_config(cfg.quantization, dtype)
    if cfg.quantization.load_in_4bit:
        assert isinstance(bnb, BitsAndBytesConfig)
        assert bnb.load_in_4bit is True
        assert bnb.bnb_4bit_quant_type == cfg.quantization.quant_type
        assert bnb.bnb_4bit_use_double_quant == cfg.quantization.double_quant
        assert bnb.bnb_4bit_compute_dtype == getattr(torch, dtype)
    else:
        assert bnb is None


def test_paper_config_holds_the_paper_recipe():
    cfg = load_config(REPO / "configs" / "paper.yaml")

    assert cfg.model.name == "mistralai/Mistral-7B-Instruct-v0.3"
    q = cfg.quantization
    assert (q.load_in_4bit, q.quant_type, q.double_quant, q.compute_dtype) == (True, "nf4", True, "auto")
    assert cfg.precision == "auto"  # bf16 on Ampere and newer, fp16 on the paper's P100 and T4
    lora = cfg.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.bias) == (16, 32, 0.0, "none")
    assert set(lora.target_modules) == ALL_PROJECTIONS
    assert cfg.max_length == 2048
    assert cfg.seed == 3407

    assert list(cfg.stages) == ["stage1", "stage2"]
    for st in cfg.stages.values():
        assert st.optim == "adamw_8bit"
        assert st.max_grad_norm == 0.3
        assert st.lr_scheduler_type == "linear"
    s1, s2 = cfg.stages["stage1"], cfg.stages["stage2"]
    assert (s1.learning_rate, s1.num_train_epochs, s1.warmup_ratio) == (2e-4, 1, 0.03)
    # The paper's batches (2 x 4 and 2 x 8) as the same conversations per optimizer step, packed without padding
    assert s1.per_device_train_batch_size * s1.gradient_accumulation_steps == 2 * 4
    assert s1.padding_free and s1.gradient_checkpointing and s1.use_liger_kernel == "auto"
    assert s1.init_from is None
    assert (s2.learning_rate, s2.num_train_epochs, s2.warmup_ratio) == (1e-4, 2, 0.05)
    assert s2.per_device_train_batch_size * s2.gradient_accumulation_steps == 2 * 8
    assert s2.init_from == "stage1"


def test_liger_kernel_setting_resolves_per_machine(tmp_path):
    import torch

    from trainer.train.config import liger_kernel_wanted

    cuda = torch.cuda.is_available()
    if not cuda:  # this machine: auto is off, and true says what is missing
        cfg = load_config(write_config(tmp_path))
        assert cfg.stage("stage1").use_liger_kernel == "auto"
        assert liger_kernel_wanted(cfg, "stage1") is False
        assert build_sft_config(cfg, "stage1", tmp_path / "out").use_liger_kernel is False
        forced = load_config(write_config(tmp_path), ["training.use_liger_kernel=true"])
        with pytest.raises(ConfigError, match=r"stages\.stage1\.use_liger_kernel is true, but this machine lacks "
                                              r"a CUDA GPU"):
            liger_kernel_wanted(forced, "stage1")
    off = load_config(write_config(tmp_path), ["training.use_liger_kernel=false"])
    assert liger_kernel_wanted(off, "stage1") is False
    with pytest.raises(ConfigError, match=r"stages\.stage1\.use_liger_kernel: must be auto, true or false, got 'fast'"):
        load_config(write_config(tmp_path), ["training.use_liger_kernel=fast"])



def test_compile_layers_is_typed_and_needs_a_compiler_on_a_cpu(tmp_path, monkeypatch):
    import shutil

    import torch

    from trainer.train.config import compile_layers_ready

    cfg = load_config(write_config(tmp_path), ["training.compile_layers=true"])
    assert cfg.stage("stage1").compile_layers and cfg.stage("stage2").compile_layers
    assert not load_config(write_config(tmp_path)).stage("stage1").compile_layers  # off unless asked
    with pytest.raises(ConfigError, match=r"stages\.stage1\.compile_layers: expected true or false, got 'yes please'"):
        load_config(write_config(tmp_path), ["stages.stage1.compile_layers=yes please"])
    compile_layers_ready(cfg, "stage1")  # this machine has g++
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"stages\.stage1\.compile_layers is true, but on a CPU torch\.compile "
                                          r"needs a C\+\+ compiler"):
        build_sft_config(cfg, "stage1", tmp_path / "out")


# Inheritance and overrides

def test_training_block_is_inherited_and_a_stage_overrides_it(tmp_path):
    cfg = load_config(write_config(tmp_path))
    s1, s2 = cfg.stages["stage1"], cfg.stages["stage2"]
    assert s1.learning_rate == 3e-4
    assert s2.learning_rate == 1e-4
    assert isinstance(s2.learning_rate, float)  # `1e-4` arrived from PyYAML as a string
    assert (s1.gradient_accumulation_steps, s2.gradient_accumulation_steps) == (4, 8)
    assert s1.max_grad_norm == s2.max_grad_norm == 0.5
    assert s1.optim == s2.optim == "adamw_torch"
    # Keys set nowhere keep the documented defaults.
    assert s1.warmup_ratio == s2.warmup_ratio == 0.03
    assert s1.dataset.eval_fraction == 0.1 and s2.dataset.eval_fraction == 0.25
    assert list(cfg.stages) == ["stage1", "stage2"]  # run order is file order
    assert cfg.source == str(tmp_path / "pipeline.yaml")


def test_stage_override_changes_only_that_stage(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path, ["stages.stage2.learning_rate=5e-5", "stages.stage1.dataset.path=other.jsonl"])
    assert cfg.stages["stage2"].learning_rate == 5e-5
    assert isinstance(cfg.stages["stage2"].learning_rate, float)
    assert cfg.stages["stage1"].learning_rate == 3e-4
    assert cfg.stages["stage1"].dataset.path == "other.jsonl"
    assert cfg.stages["stage2"].dataset.path == "data/two.jsonl"


def test_training_override_reaches_stages_that_do_not_set_the_key(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path, ["training.learning_rate=1e-3", "training.gradient_accumulation_steps=2",
                             "training.padding_free=true"])
    # stage1 inherits all three; stage2 keeps its own learning rate and accumulation.
    assert cfg.stages["stage1"].learning_rate == 1e-3
    assert cfg.stages["stage1"].gradient_accumulation_steps == 2
    assert cfg.stages["stage2"].learning_rate == 1e-4
    assert cfg.stages["stage2"].gradient_accumulation_steps == 8
    assert cfg.stages["stage1"].padding_free and cfg.stages["stage2"].padding_free


def test_training_override_without_a_training_block(tmp_path):
    text = "name: t\nstages:\n  only:\n    dataset: {path: x.jsonl}\n"
    cfg = load_config(write_config(tmp_path, text), ["training.max_steps=3", "lora.target_modules=q_proj"])
    assert cfg.stages["only"].max_steps == 3
    assert cfg.lora.target_modules == ("q_proj",)


def test_parse_override_reads_the_value_as_yaml():
    assert parse_override("stages.stage2.learning_rate=1e-4") == (["stages", "stage2", "learning_rate"], "1e-4")
    assert parse_override("training.padding_free=true") == (["training", "padding_free"], True)
    assert parse_override("lora.target_modules=[q_proj, v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    assert parse_override("model.revision=") == (["model", "revision"], "")
    assert parse_override("name=a=b") == (["name"], "a=b")


@pytest.mark.parametrize("text", ["learning_rate", "=3"])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(text)


def test_override_into_a_scalar_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"--set 'seed.value=1': 'seed' is not a section"):
        load_config(write_config(tmp_path), ["seed.value=1"])


# Unknown keys, wrong types, bad values

@pytest.mark.parametrize(
    ("override", "dotted", "suggestion"),
    [
        ("stages.stage2.learnin_rate=1e-4", "stages.stage2.learnin_rate", "learning_rate"),
        ("nmae=x", "nmae", "name"),
        ("lora.alpah=8", "lora.alpah", "alpha"),
        ("lora.target_module=[q_proj]", "lora.target_module", "target_modules"),
        ("training.warmup_ration=0.1", "training.warmup_ration", "warmup_ratio"),
        ("stages.stage1.dataset.pth=a.jsonl", "stages.stage1.dataset.pth", "path"),
        ("quantization.quant_typ=nf4", "quantization.quant_typ", "quant_type"),
    ],
)
def test_unknown_key_is_named_with_a_suggestion(tmp_path, override, dotted, suggestion):
    message = config_error(write_config(tmp_path), [override])
    assert f"{dotted}: unknown key (did you mean {suggestion!r}?)" in message


def test_unknown_key_written_in_the_file_is_named(tmp_path):
    text = TWO_STAGES.replace("    num_train_epochs: 1\n", "    num_train_epoch: 1\n")
    message = config_error(write_config(tmp_path, text))
    assert "stages.stage1.num_train_epoch: unknown key (did you mean 'num_train_epochs'?)" in message


def test_stage_only_keys_are_not_allowed_in_training(tmp_path):
    message = config_error(write_config(tmp_path), ["training.init_from=stage1"])
    assert "training.init_from: unknown key" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lora.r=abc", "lora.r: expected an integer, got 'abc'"),
        ("lora.r=2.5", "lora.r: expected an integer, got 2.5"),
        ("training.padding_free=maybe", "training.padding_free: expected true or false, got 'maybe'"),
        ("stages.stage1.padding_free=maybe", "stages.stage1.padding_free: expected true or false, got 'maybe'"),
        ("training.bf16=true", "training.bf16: replaced by the pipeline-level `precision: auto | bf16 | fp16 | fp32`"),
        ("stages.stage2.bf16=false", "stages.stage2.bf16: replaced by the pipeline-level `precision"),
        ("precision=fp8", "precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"),
        ("stages.stage2.learning_rate=fast", "stages.stage2.learning_rate: expected a number, got 'fast'"),
        ("seed=[1, 2]", "seed: expected an integer, got [1, 2]"),
        ("lora={r: 8, alpha: 16, dropout: x}", "lora.dropout: expected a number, got 'x'"),
        ("stages.stage1.dataset=data.jsonl", "stages.stage1.dataset: expected a mapping, got 'data.jsonl'"),
    ],
)
def test_type_error_names_the_key(tmp_path, override, expected):
    assert expected in config_error(write_config(tmp_path), [override])


def test_missing_dataset_path_is_named(tmp_path):
    message = config_error(write_config(tmp_path), ["stages.stage1.dataset={schema: auto}"])
    assert "stages.stage1.dataset.path: required key is missing" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("quantization.quant_type=int8", "quantization.quant_type: must be nf4 or fp4, got 'int8'"),
        ("quantization.compute_dtype=float8", "quantization.compute_dtype: must be auto, bfloat16, float16 or float32, got 'float8'"),
        ("stages.stage1.dataset.eval_fraction=1", "stages.stage1.dataset.eval_fraction: must be in [0, 1), got 1.0"),
        ("stages.stage2.dataset.eval_fraction=1.5", "stages.stage2.dataset.eval_fraction: must be in [0, 1)"),
        ("stages.stage2.dataset.schema=csv", "stages.stage2.dataset.schema: unknown schema 'csv'"),
        ("lora.bias=some", "lora.bias: must be none, all or lora_only"),
        ("lora.target_modules=[]", "lora.target_modules: must name at least one module"),
        ("training.learning_rate=0", "stages.stage1.learning_rate: must be positive"),
        ("stages.stage1.max_steps=0", "stages.stage1.max_steps: must be -1 (use epochs) or positive"),
    ],
)
def test_bad_value_is_named(tmp_path, override, expected):
    assert expected in config_error(write_config(tmp_path), [override])


def test_init_from_a_later_stage_is_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bare names are also tried as folders, relative to the working directory
    message = config_error(write_config(tmp_path), ["stages.stage1.init_from=stage2"])
    assert "stages.stage1.init_from: 'stage2' is neither an earlier stage (none) nor an adapter folder" in message


def test_init_from_a_nonexistent_stage_is_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = config_error(write_config(tmp_path), ["stages.stage2.init_from=stage0"])
    assert "stages.stage2.init_from: 'stage0' is neither an earlier stage (stage1) nor an adapter folder" in message


def test_init_from_an_existing_adapter_folder_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old_adapter").mkdir()
    cfg = load_config(write_config(tmp_path), ["stages.stage1.init_from=old_adapter"])
    assert cfg.stages["stage1"].init_from == "old_adapter"


def test_unknown_stage_lookup_names_the_stages(tmp_path):
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(ConfigError, match="no stage named 'stage3'; stages are stage1, stage2"):
        cfg.stage("stage3")


def test_missing_file_and_invalid_yaml(tmp_path):
    assert "config file not found" in config_error(tmp_path / "absent.yaml")
    assert "not valid YAML" in config_error(write_config(tmp_path, "name: [unclosed\n"))
    assert "expected a mapping at the top level" in config_error(write_config(tmp_path, "- a\n- b\n"))


# Frozen result and round trip

def test_config_is_frozen(tmp_path):
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lora.r = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stages["stage1"].learning_rate = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stages["stage1"].dataset.path = "elsewhere.jsonl"
    with pytest.raises(TypeError):
        cfg.stages["stage3"] = cfg.stages["stage1"]
    with pytest.raises(TypeError):
        del cfg.stages["stage1"]
    assert isinstance(cfg.lora.target_modules, tuple)
    assert list(cfg.stages) == ["stage1", "stage2"]


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(write_config(tmp_path), ["model.revision=abc123", "training.eval_steps=5"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again.to_dict() == cfg.to_dict()
    assert again.stages["stage2"].learning_rate == 1e-4
    assert again.stages["stage1"].eval_steps == 5


def test_dump_config_for_a_stage_records_the_stage(tmp_path):
    cfg = load_config(write_config(tmp_path))
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out, stage="stage2")
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# resolved config, as trained for stage stage2"
    data = yaml.safe_load(text)
    assert data == cfg.to_dict()
    assert "source" not in data
    # The file a run writes can be trained from again, as is.
    assert load_config(out).to_dict() == cfg.to_dict()


def test_integer_overflow_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"lora\.r: expected an integer"):
        load_config(write_config(tmp_path), ["lora.r=.inf"])


# Every shipped YAML under configs/, through the loader that reads it

def _shipped_yaml_loaders():
    from accelerate.commands.config.config_args import load_config_from_file

    from trainer.jobs import load_eval_job, load_synth_job

    return {"configs": load_config, "synth": load_synth_job, "eval": load_eval_job,
            "accelerate": load_config_from_file}


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")),
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_shipped_yaml_loads_through_its_real_loader(path):
    loaders = _shipped_yaml_loaders()
    assert path.parent.name in loaders, f"{path}: no loader is known for configs/{path.parent.name}/"
    assert loaders[path.parent.name](str(path)) is not None


def test_shipped_job_files_say_what_they_are():
    from trainer.jobs import load_eval_job, load_synth_job

    demo, gemini = (load_synth_job(REPO / "configs" / "synth" / f"{n}.yaml") for n in ("demo", "gemini"))
    assert dataclasses.replace(demo, source=None) == load_synth_job(None)  # the offline defaults, spelled out
    assert gemini.base_url.startswith("https://generativelanguage.googleapis.com/")
    assert gemini.api_key_env == "GEMINI_API_KEY"  # the variable's name: SynthJob has no field for a key itself
    default, quick = (load_eval_job(REPO / "configs" / "eval" / f"{n}.yaml") for n in ("default", "quick"))
    assert dataclasses.replace(default, source=None) == load_eval_job(None)  # every default, spelled out
    assert dataclasses.replace(quick, source=None) == dataclasses.replace(load_eval_job(None), limit=5)


def test_each_eval_default_has_one_source():
    """The gate's margin is the gate's, the answer length the one generation-settings type's: the eval's settings
    (and so its flags and configs/eval/default.yaml, checked above) take them from there."""
    from trainer.eval.gate import DEFAULT_MARGIN, gate_decision
    from trainer.inference.model import GenerationSettings
    from trainer.jobs import EvalJob

    assert EvalJob().margin == DEFAULT_MARGIN
    assert gate_decision({})["margin"] == DEFAULT_MARGIN
    assert EvalJob().max_new_tokens == GenerationSettings().max_new_tokens


def test_generate_fills_its_nulls_from_its_settings_type():
    from trainer.jobs import SynthJob
    from trainer.train.demo_model import DEMO_MODEL_NAME

    local = SynthJob().resolved()
    assert (local.model, local.concurrency, local.max_tokens) == (DEMO_MODEL_NAME, 8, 160)
    remote = SynthJob(base_url="https://example.org/v1", model="m").resolved()
    assert (remote.model, remote.concurrency, remote.max_tokens) == ("m", 4, 400)
    given = SynthJob(model="other", concurrency=2, max_tokens=50).resolved()
    assert (given.model, given.concurrency, given.max_tokens) == ("other", 2, 50)


def test_every_generate_and_eval_setting_has_a_docstring_that_its_flag_shows(capsys):
    from trainer.__main__ import main
    from trainer.jobs import EvalJob, SynthJob
    from trainer.typed_yaml import field_docs

    for cls, command in ((SynthJob, ["generate"]), (EvalJob, ["eval", "--run", "x"])):
        docs = field_docs(cls)
        assert {f.name for f in dataclasses.fields(cls)} == set(docs), cls.__name__
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert all(docs[name] in shown for name in docs if name != "source"), cls.__name__


def test_every_generate_and_eval_setting_is_a_flag_built_from_its_field():
    import argparse

    from trainer.__main__ import _add_job_flags
    from trainer.jobs import EvalJob, SynthJob

    for cls in (SynthJob, EvalJob):
        parser = argparse.ArgumentParser()
        _add_job_flags(parser, cls)
        flags = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
        assert set(flags) == {f.name for f in dataclasses.fields(cls)} - {"source"}, cls.__name__
        for name, options in flags.items():
            if name != "load_in_4bit":  # --4bit/--no-4bit, its flag(name=...)
                assert options[0] == "--" + name.replace("_", "-"), options


# One loader, one error shape: the pipeline config, the Space settings, the knowledge base and the eval rubric

KB_WITH_A_TYPO = """\
version: {version: "1", as_of: "2026-11"}
countries:
  - code: GB
    name: United Kingdom
    region: europe
    commonwealth_member: true
    aliasses: [UK]
"""
RUBRIC_WITH_A_TYPO = """\
questions:
  - id: docs-uk
    topic: documents
    question: Which documents do I need for a UK Student visa?
    false_premise: false
    must_mention: [passport]
    sorce: https://www.gov.uk/student-visa
"""


def _error(load, path) -> str:
    with pytest.raises(Exception) as info:
        load(path)
    return str(info.value)


def test_all_four_loaders_name_an_unknown_key_the_same_way(tmp_path):
    from trainer.eval import EvalError
    from trainer.eval.rubric import load_questions
    from trainer.kb.schema import KBError
    from trainer.kb.loader import load_kb
    from trainer.hub.space_settings import load_space_config

    pipeline = write_config(tmp_path, TWO_STAGES.replace("  alpha: 16\n", "  alpah: 16\n"))
    space = write_config(tmp_path, "adapters:\n  - name: demo\n    pth: runs/demo/stage2/adapter\n", "space.yaml")
    (tmp_path / "kb").mkdir()
    kb = tmp_path / "kb" / "countries.yaml"
    kb.write_text(KB_WITH_A_TYPO, encoding="utf-8")
    rubric = write_config(tmp_path, RUBRIC_WITH_A_TYPO, "questions.yaml")

    messages = {
        ConfigError: _error(load_config, pipeline),
        "space": _error(load_space_config, space),
        KBError: _error(load_kb, tmp_path / "kb"),
        EvalError: _error(load_questions, rubric),
    }
    assert messages == {
        ConfigError: f"{pipeline}: lora.alpah: unknown key (did you mean 'alpha'?)",
        "space": f"{space}: adapters[0] (demo).pth: unknown key (did you mean 'path'?)",
        KBError: f"{kb}: countries[0] (GB).aliasses: unknown key (did you mean 'aliases'?)",
        EvalError: f"{rubric}: questions[0] (docs-uk).sorce: unknown key (did you mean 'source'?)",
    }
    # each keeps its own error type, so the command line still says which part of the tool refused the file
    with pytest.raises(KBError):
        load_kb(tmp_path / "kb")
    with pytest.raises(EvalError):
        load_questions(rubric)


def test_all_four_loaders_name_a_wrong_type_and_a_missing_file_the_same_way(tmp_path):
    from trainer.eval.rubric import load_questions
    from trainer.kb.loader import load_kb
    from trainer.hub.space_settings import load_space_config

    pipeline = write_config(tmp_path, TWO_STAGES.replace("  r: 8\n", "  r: many\n"))
    space = write_config(tmp_path, "limits:\n  concurrency: many\n", "space.yaml")
    (tmp_path / "kb").mkdir()
    kb = tmp_path / "kb" / "countries.yaml"
    kb.write_text(KB_WITH_A_TYPO.replace("aliasses", "aliases").replace("true", "many"), encoding="utf-8")
    rubric = write_config(tmp_path, RUBRIC_WITH_A_TYPO.replace("sorce", "source").replace(
        "false_premise: false", "false_premise: many"), "questions.yaml")
    assert _error(load_config, pipeline) == f"{pipeline}: lora.r: expected an integer, got 'many'"
    assert _error(load_space_config, space) == f"{space}: limits.concurrency: expected an integer, got 'many'"
    assert _error(load_kb, tmp_path / "kb") == \
        f"{kb}: countries[0] (GB).commonwealth_member: expected true or false, got 'many'"
    assert _error(load_questions, rubric) == \
        f"{rubric}: questions[0] (docs-uk).false_premise: expected true or false, got 'many'"

    absent = tmp_path / "absent.yaml"
    assert _error(load_config, absent) == f"{absent}: config file not found"
    assert _error(load_space_config, absent) == f"{absent}: space config not found"
    assert _error(load_questions, absent) == f"{absent}: questions file not found"
    assert _error(load_kb, tmp_path / "absent") == f"{tmp_path / 'absent'}: knowledge base folder not found"
