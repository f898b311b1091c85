"""The Gradio Space: a study-abroad counsellor chat over one 4-bit base and hot-swappable adapters.

`build_app(registry, engine, store, cfg)` wires the UI from parts passed in: the banner and the shared settings here,
each tab from its builder in `space/` (`chat_tab`, `compare_tab`, `labelling_tab`). Nothing loads at import.
`build_engine(cfg, registry)` picks the engine the settings name. `python app.py` loads the base and adapters once
and serves on 127.0.0.1:7860 (see `--help`); on a ZeroGPU Space its answers run inside `spaces.GPU`
(`space/zerogpu.py`).
"""

import argparse
import os
import sys
from typing import Sequence

NOTICE = ("Answers come from a language model and can be wrong or out of date. Check every requirement, fee and "
          "deadline with the university and the official government sources before you act on it.")


def accept_null(slider):
    """`slider` (a generation setting) made optional for API callers: null reaches the handler as None, which applies
    the configured value, instead of failing inside Gradio's own check; a value that is not a number gets one line.
    (Wrapped on the instance: subclassing a Gradio component writes a .pyi stub next to this file.)"""
    import gradio as gr

    check = slider.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if isinstance(payload, bool) or not isinstance(payload, (int, float)):
            raise gr.Error(f"{slider.label}: expected a number, got {payload!r}.")
        return check(payload)

    slider.preprocess = preprocess
    return slider


def build_app(registry, engine, store=None, cfg=None, grounding=None):
    """The Blocks app: banner, shared settings, then the Chat, Compare and Labelling tabs (`space/*_tab.py`).
    `store` (feedback) is optional: without it there is no feedback form and no labelling. `grounding`
    (space.grounding.Grounding) adds answers grounded in the knowledge base, their sources and the live check."""
    import gradio as gr

    from space.chat_tab import build_chat_tab
    from space.compare_tab import build_compare_tab
    from space.display import safe_text
    from space.labelling_tab import build_labelling_tab
    from trainer.inference.model import BASE
    from trainer.hub.space_settings import SpaceConfig

    cfg = cfg or SpaceConfig()
    limits, defaults = cfg.limits, cfg.generation
    choices = [("Base model (no adapter)", BASE)] + [
        (f"{name} - {registry.get(name).description}" if registry.get(name).description else name, name)
        for name in engine.adapter_names
    ]
    default_adapter = engine.adapter_names[-1] if engine.adapter_names else BASE
    banner = [f"**Base model:** `{engine.base_model}` ({engine.serving}), adapters: "
              + (", ".join(f"`{n}`" for n in engine.adapter_names) or "none")]
    if engine.is_demo:
        banner.append("**Demo mode:** no GPU here, so this runs the embedded demo model (SmolLM2-135M-Instruct) "
                      "on the CPU. It shows how the pipeline works; its answers are not counselling.")
    for name, reason in engine.refused.items():
        banner.append(f"Adapter `{name}` was not loaded: {safe_text(reason)}")
    if grounding is not None:
        banner.append(f"**Knowledge base** {safe_text(grounding.kb_version)}: answers can be grounded in its facts "
                      "(numbered sources under each answer), and every answer is checked against it.")

    with gr.Blocks(title="Study-abroad counsellor") as demo:
        gr.Markdown("# Study-abroad counsellor\n" + "\n\n".join(banner))
        gr.Markdown(f"> {NOTICE}", elem_id="notice")
        # One prompt and one set of sliders above the tabs: Chat and Compare both generate with them.
        with gr.Accordion("Counselling prompt and generation settings", open=False):
            system_prompt = gr.Textbox(cfg.system_prompt, label="System prompt", lines=4)
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(16, limits.max_new_tokens_limit, value=defaults.max_new_tokens, step=16,
                                           label="Max new tokens")
        gen_inputs = [system_prompt, *map(accept_null, (temperature, top_p, max_new_tokens))]

        build_chat_tab(engine, store, cfg, choices, default_adapter, gen_inputs, grounding)
        build_compare_tab(engine, cfg, choices, default_adapter, gen_inputs, grounding)
        build_labelling_tab(demo, engine, store, cfg)

    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return demo


def build_engine(cfg, registry):
    """The engine `cfg.engine` names (a `trainer.inference.engine.Engine`), constructed cheaply: call `load()` next."""
    if cfg.engine == "openai":
        from space.remote_engine import OpenAIEngine

        return OpenAIEngine.from_config(cfg, registry)
    from space import zerogpu
    from space.engine import InferenceEngine, choose_base_model

    decode = zerogpu.decode_mode(cfg.decode) if zerogpu.on_zerogpu() else cfg.decode
    return InferenceEngine(choose_base_model(cfg.base_model), registry, load_in_4bit=cfg.load_in_4bit,
                           base_revision=cfg.base_revision, decode=decode, cache_tokens=cfg.decode_cache_tokens)


def open_feedback_store(cfg):
    """The SQLite store, plus (with `feedback.hub_dataset`) a CommitScheduler pushing its JSONL copy."""
    from pathlib import Path

    from trainer.data.feedback import FeedbackStore

    settings = cfg.feedback
    store_path = Path(settings.store)
    if settings.hub_dataset is None:
        return FeedbackStore(store_path)
    from huggingface_hub import CommitScheduler

    folder = store_path.parent / "hub-jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    scheduler = CommitScheduler(repo_id=settings.hub_dataset, repo_type="dataset", folder_path=folder,
                                path_in_repo="records", every=settings.every_minutes, private=True,
                                allow_patterns=["*.jsonl"])
    print(f"[app] feedback is also committed to the dataset {settings.hub_dataset} every "
          f"{settings.every_minutes:g} min", flush=True)
    return FeedbackStore(store_path, jsonl_dir=folder, scheduler=scheduler)


def main(argv: Sequence[str] | None = None) -> int:
    """Load the settings, the base and its adapters, open the feedback store, then serve until stopped."""
    parser = argparse.ArgumentParser(description="Serve the study-abroad counsellor app.")
    parser.add_argument("--config", default="space_config/space.yaml", help="Space settings YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set limits.max_input_chars=1000")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)

    from space import zerogpu

    if zerogpu.on_zerogpu():
        zerogpu.prepare()  # before torch is touched: `spaces` patches it (README "ZeroGPU" in docs/publishing.md)
    from trainer.train.model import quiet_bitsandbytes_kernel_notice

    quiet_bitsandbytes_kernel_notice()  # before the engine brings in bitsandbytes
    from space.registry import AdapterRegistry
    from trainer.typed_yaml import ConfigError
    from trainer.hub.space_settings import load_space_config
    from space.grounding import Grounding
    from trainer.train.demo_model import DemoModelError
    from trainer.kb.schema import KBError
    from trainer.train.model import ModelError

    try:
        # Without a settings file at the default place, the defaults apply; a file named explicitly must exist.
        missing_default = args.config == parser.get_default("config") and not os.path.exists(args.config)
        cfg = load_space_config(None if missing_default else args.config, args.overrides)
        registry = AdapterRegistry.from_config(cfg, ".")
        grounding = None
        if cfg.grounding.enabled or cfg.grounding.check_answers or any(a.ground for a in registry):
            grounding = Grounding.load(cfg.grounding, registry)  # a broken KB stops here, before the model loads
            print(f"[app] knowledge base {grounding.kb_version}: {len(grounding.retriever.passages)} passages "
                  f"indexed in {grounding.retriever.build_seconds:.2f}s", flush=True)
        engine = build_engine(cfg, registry)
        print(f"[app] {cfg.engine} engine: {engine.base_model} and {len(registry)} adapter(s) ...", flush=True)
        engine.load()
        if cfg.engine == "local":  # the local engine's answers need the GPU; a remote engine's do not
            engine = zerogpu.serve_on_zerogpu(engine)  # off ZeroGPU: the engine itself
    except (ConfigError, ModelError, DemoModelError, KBError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[app] ready in {engine.load_seconds:.1f}s: base + {', '.join(engine.adapter_names) or 'no adapters'}",
          flush=True)
    import gradio as gr

    try:
        store = open_feedback_store(cfg) if cfg.feedback.enabled else None
    except Exception as exc:  # the Hub dataset could not be created or reached: say so in one line
        print(f"error: feedback store: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    demo = build_app(registry, engine, store, cfg, grounding)
    _, url, _ = demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(),
                            prevent_thread_lock=True, quiet=True)
    print(f"[app] running on {url}", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
