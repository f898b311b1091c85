"""The Space's settings (trainer/hub/space_settings.py): the decoding defaults are the one GenerationSettings type,
the answer-length bound is a limit, and every rule fails with one line naming the file and the key."""

from __future__ import annotations

import pytest

from space.chat_tab import decoding
from trainer.inference.model import GenerationSettings
from trainer.typed_yaml import ConfigError
from trainer.hub.space_settings import load_space_config, space_config_yaml


def write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_generation_is_the_one_generation_settings_type(tmp_path):
    cfg = load_space_config(write(tmp_path, "generation:\n  temperature: 0\n  repetition_penalty: 1.3\n"
                                            "limits:\n  max_new_tokens_limit: 2048\n"))
    assert type(cfg.generation) is GenerationSettings
    assert cfg.generation == GenerationSettings(temperature=0.0, repetition_penalty=1.3)
    assert cfg.limits.max_new_tokens_limit == 2048
    assert cfg.generation.generate_kwargs()["do_sample"] is False  # temperature 0 decodes greedily
    assert load_space_config(None, ["generation.top_p=0.5"]).generation.top_p == 0.5


def test_the_app_applies_the_sliders_to_the_configured_settings(tmp_path):
    cfg = load_space_config(write(tmp_path, "generation:\n  repetition_penalty: 1.3\n"))
    chosen = decoding(cfg.generation, "0.2", 0.8, 64.0)  # Gradio may send slider values as text or floats
    assert chosen == GenerationSettings(max_new_tokens=64, temperature=0.2, top_p=0.8, repetition_penalty=1.3)
    assert type(chosen.max_new_tokens) is int


@pytest.mark.parametrize("text, message", [
    ("generation:\n  temperature: 2.5\n", r"space\.yaml: generation\.temperature: 2\.5 must be in \[0, 2\]"),
    ("generation:\n  temperature: -0.1\n", r"generation\.temperature: -0\.1 must be in \[0, 2\]"),
    ("generation:\n  top_p: 0\n", r"generation\.top_p: 0 must be in \(0, 1\]"),
    ("generation:\n  top_p: 1.5\n", r"generation\.top_p: 1\.5 must be in \(0, 1\]"),
    ("generation:\n  max_new_tokens: 0\n", r"generation\.max_new_tokens: 0 must be between 1 and "
                                           r"limits\.max_new_tokens_limit \(1024\)"),
    ("generation:\n  max_new_tokens: 600\nlimits:\n  max_new_tokens_limit: 512\n",
     r"generation\.max_new_tokens: 600 must be between 1 and limits\.max_new_tokens_limit \(512\)"),
    ("limits:\n  max_new_tokens_limit: 0\n", r"limits\.max_new_tokens_limit: must be at least 1"),
    ("generation:\n  temprature: 0.5\n", r"generation\.temprature: unknown key \(did you mean 'temperature'\?\)"),
    ("generation:\n  top_p: high\n", r"generation\.top_p: expected a number, got 'high'"),
    ("decode: fast\n", r"space\.yaml: decode: 'fast' must be one of auto, eager, compiled"),
    ("decode: compiled\ndecode_cache_tokens: 1024\n",
     r"decode_cache_tokens: 1024 must be larger than limits\.max_new_tokens_limit \(1024\): the cache holds"),
])
def test_each_rule_names_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_space_config(write(tmp_path, text))
    assert "\n" not in str(caught.value)


def test_written_settings_load_back_equal(tmp_path):
    cfg = load_space_config(write(tmp_path, "generation:\n  temperature: 0.3\n  max_new_tokens: 700\n"
                                            "limits:\n  max_new_tokens_limit: 800\n"
                                            "adapters:\n  - {name: stage2, repo: org/adapter, revision: v1}\n"))
    again = load_space_config(write(tmp_path, space_config_yaml(cfg, "# written\n")))
    assert again == cfg  # the same file name, so `source` matches too
    assert again.generation.max_new_tokens == 700 and again.limits.max_new_tokens_limit == 800
