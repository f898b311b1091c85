"""The inference engine and the adapter registry, on the tiny Mistral: switching, isolation, refusal, stopping."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from helpers import make_adapter

from space.engine import InferenceEngine, choose_decode, same_base
from trainer.inference.engine import StreamStats
from space.registry import AdapterRegistry
from trainer.inference.model import BASE, GenerationSettings
from trainer.typed_yaml import ConfigError
from trainer.hub.space_settings import load_space_config

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)
QUESTION = [{"role": "user", "content": "How do I apply for a student visa?"}]


@pytest.fixture(scope="module")
def engine(tiny_mistral_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    make_adapter(tiny_mistral_dir, root / "a", seed=1)
    make_adapter(tiny_mistral_dir, root / "b", seed=2)
    make_adapter(tiny_mistral_dir, root / "other", seed=3, base_name="mistralai/Mistral-7B-Instruct-v0.3")
    (root / "space.yaml").write_text(
        "discover_runs: false\nadapters:\n"
        f"  - {{name: stage1, path: {root / 'a'}}}\n"
        f"  - {{name: stage2, path: {root / 'b'}, description: second}}\n"
        f"  - {{name: foreign, path: {root / 'other'}}}\n")
    cfg = load_space_config(root / "space.yaml")
    return InferenceEngine(str(tiny_mistral_dir), AdapterRegistry.from_config(cfg, root), load_in_4bit=False).load()


def test_adapters_load_into_one_model_and_a_foreign_one_is_refused(engine):
    from peft import PeftModel

    assert engine.adapter_names == ["stage1", "stage2"]
    assert isinstance(engine.model, PeftModel) and set(engine.model.peft_config) == {"stage1", "stage2"}
    assert "trained on 'mistralai/Mistral-7B-Instruct-v0.3'" in engine.refused["foreign"]
    assert engine.templates["stage1"] == engine.tokenizer.chat_template  # the template saved with the adapter


def test_switching_changes_the_answer_and_base_is_unchanged_after_switching(engine):
    base_first = engine.generate(QUESTION, BASE, GREEDY)
    a = engine.generate(QUESTION, "stage1", GREEDY)
    b = engine.generate(QUESTION, "stage2", GREEDY)
    assert len({base_first, a, b}) == 3
    for name in ("stage2", BASE, "stage1", BASE, "stage2"):
        engine.generate(QUESTION, name, GREEDY)
    assert engine.generate(QUESTION, BASE, GREEDY) == base_first
    assert engine.generate(QUESTION, "stage1", GREEDY) == a


def test_public_and_fast_switching_give_the_same_answers(engine):
    served = engine.served
    assert served._fast_switch  # PEFT 0.21's layer state is what the fast path sets
    fast = {name: engine.generate(QUESTION, name, GREEDY) for name in ("stage2", BASE, "stage1", BASE)}
    served._fast_switch = False
    try:
        public = {name: engine.generate(QUESTION, name, GREEDY) for name in ("stage2", BASE, "stage1", BASE)}
    finally:
        served._fast_switch = True
    assert fast == public


def test_concurrent_requests_never_get_each_others_adapter(engine):
    expected = {name: engine.generate(QUESTION, name, GREEDY) for name in (BASE, "stage1", "stage2")}
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def visitor(name: str) -> None:
        try:
            for _ in range(4):
                results.append((name, engine.generate(QUESTION, name, GREEDY)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=visitor, args=(n,)) for n in ("stage1", "stage2", BASE, "stage1", "stage2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20
    assert all(text == expected[name] for name, text in results)


def test_streaming_grows_and_stop_ends_early(engine):
    settings = GenerationSettings(max_new_tokens=40, temperature=0)
    stats = StreamStats()
    pieces = list(engine.stream(QUESTION, "stage1", settings, stats=stats))
    assert len(pieces) > 1 and all(pieces[i + 1].startswith(pieces[i]) for i in range(len(pieces) - 1))
    assert stats.first_token_s is not None and not stats.stopped

    stop = threading.Event()
    stats = StreamStats()
    stream = engine.stream(QUESTION, "stage2", settings, stop=stop, stats=stats)
    next(stream)
    stream.close()  # the visitor pressed stop / left the page
    assert stats.stopped and stats.new_tokens < 40
    # the lock was released: another request runs
    assert engine.generate(QUESTION, BASE, GenerationSettings(max_new_tokens=2, temperature=0))


def test_a_pad_id_of_zero_is_used_as_the_pad_id(engine, monkeypatch):
    """A tokenizer whose pad id is 0 (here `<unk>`) and not its EOS: generation pads with 0, not with the EOS."""
    tokenizer, model = engine.tokenizer, engine.model
    seen = []
    generate = model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["pad_token_id"])
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording)
    short = GenerationSettings(max_new_tokens=2, temperature=0)
    before = tokenizer.pad_token
    tokenizer.pad_token = "<unk>"
    try:
        assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id != 0
        list(engine.stream(QUESTION, "stage1", short))
        engine.generate(QUESTION, "stage1", short)
    finally:
        tokenizer.pad_token = before
    assert tokenizer.pad_token_id is None  # as the fixture's tokenizer was
    assert seen == [0, 0]


def test_the_local_engines_answer_through_the_one_interface(engine):
    from trainer.inference.engine import Engine, LocalEngine

    settings = GenerationSettings(max_new_tokens=8, temperature=0)
    local = LocalEngine(engine.served, batch_size=2)
    assert isinstance(engine, Engine) and isinstance(local, Engine)
    batch = engine.answer_all([QUESTION, QUESTION], "stage2", settings)
    assert batch.texts[0] == batch.texts[1] == engine.generate(QUESTION, "stage2", settings)
    assert local.answer_all([QUESTION], "stage2", settings).texts == batch.texts[:1]
    streamed = list(local.stream(QUESTION, "stage2", settings))
    assert streamed[-1] == batch.texts[0] and local.base_model == engine.served.ref.name


def test_prompts_use_the_chat_template_of_the_adapter(engine):
    ids = engine.prompt_ids([{"role": "system", "content": "Be brief."}, *QUESTION], "stage2")
    assert engine.prompt_tokens([{"role": "system", "content": "Be brief."}, *QUESTION], "stage2") == len(ids)
    assert engine.context_length == engine.model.config.max_position_embeddings > len(ids)
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<s>[INST] Be brief.\n\nHow do I apply") and text.endswith("[/INST]")
    with pytest.raises(KeyError, match="not loaded"):
        engine.prompt_ids(QUESTION, "foreign")


def test_registry_discovers_runs_and_names_bad_entries(tmp_path, tiny_mistral_dir):
    adapter = make_adapter(tiny_mistral_dir, tmp_path / "runs" / "demo" / "stage2" / "adapter", seed=4)
    (adapter.parent / "metrics.json").write_text(json.dumps({"eval_loss_first": 2.0, "eval_loss_last": 1.5}))
    registry = AdapterRegistry.from_config(load_space_config(None), tmp_path)
    found = registry.get("demo/stage2")
    assert found.origin == "runs" and "eval loss 2.000 -> 1.500" in found.description

    bad = tmp_path / "bad.yaml"
    bad.write_text("adapters:\n  - name: stage1\n    path: runs/nowhere/adapter\n")
    with pytest.raises(ConfigError, match=r"adapters\[0\] \(stage1\)\.path: runs/nowhere/adapter is not an adapter"):
        AdapterRegistry.from_config(load_space_config(bad), tmp_path)
    bad.write_text("adapters:\n  - name: stage1\n    repo: org/x\n    revison: main\n")
    with pytest.raises(ConfigError,
                       match=r"adapters\[0\] \(stage1\)\.revison: unknown key \(did you mean 'revision'\?\)"):
        load_space_config(bad)
    bad.write_text("adapters:\n  - {name: base, repo: org/x}\n")
    with pytest.raises(ConfigError, match="not 'base'"):
        load_space_config(bad)
    bad.write_text("adapters:\n  - {name: a, repo: org/x, path: runs}\n")
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_space_config(bad)


def test_same_base_treats_demo_aliases_as_one_model():
    assert same_base("demo", "smollm2-135m-instruct")
    assert same_base("mistralai/Mistral-7B-Instruct-v0.3", "mistralai/mistral-7b-instruct-v0.3")
    assert not same_base("smollm2-135m-instruct", "mistralai/Mistral-7B-Instruct-v0.3")


# Compiled decode (decode: compiled): a static KV cache, a torch.compile'd decode step, adapters hot-swapped into one
# slot. Compiling takes tens of seconds on a CPU, so these tests are slow-marked.


def compiled_engine(tiny_mistral_dir, root: Path, load_in_4bit: bool) -> InferenceEngine:
    """Two adapters of different rank and alpha (the slot is padded, scalings swapped), plus one that targets other
    modules (refused: it cannot share the slot)."""
    make_adapter(tiny_mistral_dir, root / "a", seed=1)
    make_adapter(tiny_mistral_dir, root / "b", seed=2, r=4, alpha=8)
    make_adapter(tiny_mistral_dir, root / "c", seed=3, targets=("q_proj", "o_proj"))
    (root / "space.yaml").write_text(
        "discover_runs: false\nadapters:\n"
        f"  - {{name: stage1, path: {root / 'a'}}}\n  - {{name: stage2, path: {root / 'b'}}}\n"
        f"  - {{name: elsewhere, path: {root / 'c'}}}\n")
    registry = AdapterRegistry.from_config(load_space_config(root / "space.yaml"), root)
    return InferenceEngine(str(tiny_mistral_dir), registry, load_in_4bit=load_in_4bit, decode="compiled",
                           cache_tokens=256)


def streamed(engine, name, settings=GenerationSettings(max_new_tokens=24, temperature=0), question=QUESTION) -> str:
    return list(engine.stream(question, name, settings))[-1]


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_answers_and_switching_never_recompiles(tiny_mistral_dir, tmp_path):
    from torch._dynamo.utils import counters

    root = tmp_path / "compiled"
    root.mkdir()
    at_start = counters["stats"]["unique_graphs"]
    compiled = compiled_engine(tiny_mistral_dir, root, load_in_4bit=False).load()  # compiles base + slot graphs
    assert counters["stats"]["unique_graphs"] > at_start  # the decode step really was compiled
    assert compiled.served.decode == "compiled" and "compiled decode" in compiled.serving
    assert compiled.adapter_names == ["stage1", "stage2"]
    assert "same target modules" in compiled.refused["elsewhere"]
    eager = InferenceEngine(str(tiny_mistral_dir), compiled.registry, load_in_4bit=False, decode="eager").load()
    assert eager.served.decode == "eager" and eager.adapter_names == ["stage1", "stage2", "elsewhere"]

    graphs = counters["stats"]["unique_graphs"]
    order = ("stage1", "stage2", BASE, "stage2", "stage1", BASE)
    answers = [streamed(compiled, name) for name in order]
    assert counters["stats"]["unique_graphs"] == graphs  # no adapter or base switch compiled anything new
    assert answers == [streamed(eager, name) for name in order]
    assert len(set(answers[:3])) == 3  # the adapters really differ, so the swap is what made them right
    # batched answers (the eval's path) after the swaps: still each adapter's own
    assert [compiled.generate(QUESTION, n, GREEDY) for n in order[:3]] == [eager.generate(QUESTION, n, GREEDY)
                                                                          for n in order[:3]]

    served = compiled.served
    served.activate("stage1")
    started = time.perf_counter()
    for i in range(60):
        served.activate(("stage2", BASE, "stage1")[i % 3])
    assert (time.perf_counter() - started) / 60 < 0.05  # a copy of the LoRA tensors, not a reload or a recompile

    # a conversation longer than the static cache decodes eagerly, with the same answer and no recompile
    long_question = [{"role": "user", "content": "How do I apply for a student visa? " * 30}]
    assert len(compiled.prompt_ids(long_question, "stage2")) + 24 > 256
    assert streamed(compiled, "stage2", question=long_question) == streamed(eager, "stage2", question=long_question)
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_decode_on_a_4bit_base_is_refused_on_a_cpu(tiny_mistral_dir, tmp_path):
    """Measured on the demo model: bitsandbytes' compiled CPU 4-bit step is slower than eager and its logits drift
    (up to 0.75) from the eager ones, so the setting is refused there with a message, not served differently."""
    import torch

    from trainer.train.model import ModelError

    assert not torch.cuda.is_available()
    with pytest.raises(ModelError, match="decode: compiled with a 4-bit base needs a CUDA GPU"):
        compiled_engine(tiny_mistral_dir, tmp_path, load_in_4bit=True).load()


def test_decode_modes_are_checked_and_auto_is_eager_on_a_cpu(tiny_mistral_dir):
    from trainer.inference.model import AdapterModel
    from trainer.train.model import ModelError

    class Model:
        def parameters(self):
            import torch

            yield torch.zeros(1)

    class Tokenizer:
        chat_template = "{{ messages }}"

    assert AdapterModel(Model(), Tokenizer(), None, decode="auto").decode == "eager"
    with pytest.raises(ModelError, match="decode: 'fast' must be one of auto, eager, compiled"):
        AdapterModel(Model(), Tokenizer(), None, decode="fast")
    with pytest.raises(ModelError, match="cache_tokens must be at least 16"):
        AdapterModel(Model(), Tokenizer(), None, decode="compiled", cache_tokens=8)


@pytest.mark.parametrize("card, auto, compiled", [("t4", "compiled", "compiled"), ("v100", "compiled", "compiled"),
                                                  ("p100", "eager", "eager"), ("a100-80gb", "compiled", "compiled"),
                                                  (None, "eager", "compiled")])
def test_decode_follows_where_triton_runs(card, auto, compiled):
    """`auto` compiles only where Triton runs (CUDA capability 7.0+); an explicit `compiled` on a P100 decodes eagerly
    and says why; on a CPU `compiled` is left to the inference path (allowed unquantized, refused in 4-bit)."""
    from trainer.train.device import DeviceInfo, named_gpu

    device = named_gpu(card) if card else DeviceInfo("cpu", "cpu")
    assert choose_decode("auto", device) == (auto, None)
    assert choose_decode("eager", device) == ("eager", None)
    mode, why = choose_decode("compiled", device)
    assert mode == compiled and (why is None) == (mode == "compiled")
    if why:
        assert why == ("decode: compiled needs Triton, which needs compute capability 7.0 or newer; the "
                       "Tesla P100-PCIE-16GB is 6.0, so answers decode eagerly")


def test_the_engine_names_its_precision_by_the_device_rule(engine):
    from trainer.train.device import detect_device, resolve_precision

    assert engine.precision == resolve_precision("auto", detect_device())
    assert engine.serving.startswith(f"4-bit NF4, {engine.precision.name}") or \
        engine.serving.startswith(f"unquantized, {engine.precision.name}")


def test_a_compiled_decode_that_fails_at_start_up_falls_back_to_eager(tiny_mistral_dir, tmp_path, monkeypatch,
                                                                       capsys):
    """A machine that cannot compile (no compiler, a device torch.compile fails on) still gets a working app."""
    from trainer.inference.decode import CompiledDecode

    def cannot(self):
        raise RuntimeError("InductorError: no working C++ compiler found\nlong traceback")

    monkeypatch.setattr(CompiledDecode, "generate_kwargs", cannot)
    engine = compiled_engine(tiny_mistral_dir, tmp_path, load_in_4bit=False).load()
    assert engine.served.decode == "eager" and "compiled" not in engine.serving
    assert "compiled decode failed (RuntimeError: InductorError: no working C++ compiler found); decoding eagerly" \
        in capsys.readouterr().out
    assert streamed(engine, "stage1") != streamed(engine, BASE)


def test_a_torch_build_without_kernels_for_the_gpu_is_named_before_the_base_loads(tiny_mistral_dir, monkeypatch):
    import space.engine as engine_module
    from trainer.train.device import DeviceError, DeviceInfo

    p100_on_cu128 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0), 15.89, ("sm_75", "sm_80", "sm_90"))
    monkeypatch.setattr(engine_module, "detect_device", lambda: p100_on_cu128)
    loads = []
    monkeypatch.setattr(engine_module, "load_adapter_model", lambda *a, **k: loads.append(a))
    with pytest.raises(DeviceError, match="whl/cu126") as err:
        InferenceEngine(str(tiny_mistral_dir), AdapterRegistry([]), load_in_4bit=True).load()
    assert "sm_60" in str(err.value) and not loads
