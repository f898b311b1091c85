"""The Gradio Space: a study-abroad counsellor chat over one 4-bit base and hot-swappable adapters.

`build_app(registry, engine, store, cfg)` wires the UI from parts passed in; nothing loads at import.
`python app.py` loads the base and adapters once and serves on 127.0.0.1:7860 (see `--help`).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
from typing import Any, Sequence

NOTICE = ("Answers come from a language model and can be wrong or out of date. Check every requirement, fee and "
          "deadline with the university and the official government sources before you act on it.")
_JS_LINK = re.compile(r"\]\(\s*(?:javascript|vbscript|data):", re.IGNORECASE)


def safe_text(text: str) -> str:
    """Display form of a message: HTML escaped (markdown still renders) and script links disarmed."""
    return _JS_LINK.sub("](#blocked:", html.escape(text, quote=False))


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message as Gradio hands it back (a string, or a list of typed parts), unescaped."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return html.unescape(content) if isinstance(content, str) else ""


def trim_history(history: Sequence[dict[str, Any]], max_turns: int) -> tuple[list[dict[str, str]], int]:
    """The last `max_turns` question/answer pairs as model messages (display escaping undone), and how many
    earlier pairs were left out."""
    pairs: list[list[dict[str, str]]] = []
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        turn = {"role": role, "content": message_text(message)}
        if role == "user" or not pairs:
            pairs.append([turn])
        else:
            pairs[-1].append(turn)
    complete = [p for p in pairs if len(p) == 2 and p[0]["role"] == "user" and p[1]["content"].strip()]
    kept = complete[-max_turns:] if max_turns else []
    return [m for pair in kept for m in pair], len(complete) - len(kept)


def build_app(registry, engine, store=None, cfg=None):
    """The Blocks app. `store` (feedback) is optional until the labelling tab uses it."""
    import gradio as gr

    from space.engine import BASE, GenerationSettings
    from trainer.config import SpaceConfig

    cfg = cfg or SpaceConfig()
    limits, defaults = cfg.limits, cfg.generation
    choices = [("Base model (no adapter)", BASE)] + [
        (f"{name} - {registry.get(name).description}" if registry.get(name).description else name, name)
        for name in engine.adapter_names
    ]
    default_adapter = engine.adapter_names[-1] if engine.adapter_names else BASE
    quant = "4-bit NF4" if engine.load_in_4bit else "unquantized"
    banner = [f"**Base model:** `{engine.base_model}` ({quant}), adapters: "
              + (", ".join(f"`{n}`" for n in engine.adapter_names) or "none")]
    if engine.is_demo:
        banner.append("**Demo mode:** no GPU here, so this runs the embedded demo model (SmolLM2-135M-Instruct) "
                      "on the CPU. It shows how the pipeline works; its answers are not counselling.")
    for name, reason in engine.refused.items():
        banner.append(f"Adapter `{name}` was not loaded: {safe_text(reason)}")

    def settings(temperature, top_p, max_new_tokens) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), repetition_penalty=defaults.repetition_penalty)

    def check_question(message: str) -> str:
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a question first.")
        if len(message) > limits.max_input_chars:
            raise gr.Error(f"Your message is {len(message):,} characters long; the limit is "
                           f"{limits.max_input_chars:,}. Please shorten it.")
        return message

    def check_adapter(adapter: str) -> str:
        if adapter != BASE and adapter not in engine.adapter_names:
            raise gr.Error(f"Unknown adapter {adapter!r}.")
        return adapter

    def respond(message, history, adapter, system_prompt, temperature, top_p, max_new_tokens):
        message, adapter = check_question(message), check_adapter(adapter)
        history = list(history or [])
        earlier, dropped = trim_history(history, limits.max_history_turns)
        if dropped:
            gr.Info(f"Only the last {limits.max_history_turns} exchanges are sent to the model; "
                    f"{dropped} earlier one(s) were left out.")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            earlier + [{"role": "user", "content": message}]
        history += [{"role": "user", "content": safe_text(message)}, {"role": "assistant", "content": ""}]
        yield history, ""
        for text in engine.stream(messages, adapter, settings(temperature, top_p, max_new_tokens)):
            history[-1] = {"role": "assistant", "content": safe_text(text)}
            yield history, ""

    def retry(history, adapter, system_prompt, temperature, top_p, max_new_tokens):
        history = list(history or [])
        while history and history[-1].get("role") == "assistant":
            history.pop()
        if not history:
            raise gr.Error("Nothing to retry yet.")
        last = message_text(history.pop())
        yield from respond(last, history, adapter, system_prompt, temperature, top_p, max_new_tokens)

    def compare(question, adapter_a, adapter_b, system_prompt, temperature, top_p, max_new_tokens):
        question = check_question(question)
        adapter_a, adapter_b = check_adapter(adapter_a), check_adapter(adapter_b)
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else []) + \
            [{"role": "user", "content": question}]
        gen = settings(temperature, top_p, max_new_tokens)
        answer_a = ""
        for answer_a in engine.stream(messages, adapter_a, gen):
            yield safe_text(answer_a), ""
        for answer_b in engine.stream(messages, adapter_b, gen):
            yield safe_text(answer_a), safe_text(answer_b)

    with gr.Blocks(title="Study-abroad counsellor") as demo:
        gr.Markdown("# Study-abroad counsellor\n" + "\n\n".join(banner))
        gr.Markdown(f"> {NOTICE}", elem_id="notice")
        with gr.Accordion("Counselling prompt and generation settings", open=False):
            system_prompt = gr.Textbox(cfg.system_prompt, label="System prompt", lines=4)
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
                max_new_tokens = gr.Slider(16, defaults.max_new_tokens_limit, value=defaults.max_new_tokens, step=16,
                                           label="Max new tokens")
        gen_inputs = [system_prompt, temperature, top_p, max_new_tokens]

        with gr.Tab("Chat"):
            adapter = gr.Dropdown(choices, value=default_adapter, label="Adapter", elem_id="adapter")
            chatbot = gr.Chatbot(label="Counsellor", height=480, sanitize_html=True, render_markdown=True,
                                 buttons=["copy"], elem_id="chatbot")
            with gr.Row():
                question = gr.Textbox(placeholder="Ask about admissions, visas, scholarships, costs ...",
                                      show_label=False, scale=6, elem_id="question", max_lines=8)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
            with gr.Row():
                retry_btn = gr.Button("Retry", size="sm", elem_id="retry")
                clear = gr.Button("Clear", size="sm", elem_id="clear")
            gr.Examples(list(cfg.examples), inputs=question, label="Example questions")
            chat_inputs = [question, chatbot, adapter, *gen_inputs]
            sent = send.click(respond, chat_inputs, [chatbot, question], api_name="chat")
            submitted = question.submit(respond, chat_inputs, [chatbot, question], api_name=False)
            retried = retry_btn.click(retry, [chatbot, adapter, *gen_inputs], [chatbot, question], api_name="retry")
            stop.click(None, None, None, cancels=[sent, submitted, retried], api_name=False)
            clear.click(lambda: ([], ""), None, [chatbot, question], api_name="clear")

        with gr.Tab("Compare"):
            gr.Markdown("The same question answered by two adapters on the same base, one after the other.")
            compare_question = gr.Textbox(label="Question", elem_id="compare-question", max_lines=8)
            with gr.Row():
                adapter_a = gr.Dropdown(choices, value=BASE, label="Left", elem_id="adapter-a")
                adapter_b = gr.Dropdown(choices, value=default_adapter, label="Right", elem_id="adapter-b")
            compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Row():
                answer_a = gr.Markdown(sanitize_html=True, elem_id="answer-a")
                answer_b = gr.Markdown(sanitize_html=True, elem_id="answer-b")
            compare_btn.click(compare, [compare_question, adapter_a, adapter_b, *gen_inputs], [answer_a, answer_b],
                              api_name="compare")

    demo.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the study-abroad counsellor app.")
    parser.add_argument("--config", default="space_config/space.yaml", help="Space settings YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set limits.max_input_chars=1000")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)

    from space.engine import InferenceEngine, choose_base_model
    from space.registry import AdapterRegistry
    from trainer.config import ConfigError, load_space_config
    from trainer.demo_model import DemoModelError
    from trainer.modeling import ModelError

    try:
        # Without a settings file at the default place, the defaults apply; a file named explicitly must exist.
        missing_default = args.config == parser.get_default("config") and not os.path.exists(args.config)
        cfg = load_space_config(None if missing_default else args.config, args.overrides)
        registry = AdapterRegistry.from_config(cfg, ".")
        engine = InferenceEngine(choose_base_model(cfg.base_model), registry, load_in_4bit=cfg.load_in_4bit,
                                 base_revision=cfg.base_revision)
        print(f"[app] loading {engine.base_model} and {len(registry)} adapter(s) ...", flush=True)
        engine.load()
    except (ConfigError, ModelError, DemoModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[app] ready in {engine.load_seconds:.1f}s: base + {', '.join(engine.adapter_names) or 'no adapters'}",
          flush=True)
    import gradio as gr

    demo = build_app(registry, engine, None, cfg)
    _, url, _ = demo.launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(),
                            prevent_thread_lock=True, quiet=True)
    print(f"[app] running on {url}", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
