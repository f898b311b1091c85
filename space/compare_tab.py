"""The Compare tab: one question answered by two adapters on the same base, one after the other, streamed."""

from typing import Any

from space.chat_tab import (answer_with_notes, check_adapter, check_question, check_system_prompt, decoding,
                            fit_prompt, ground_default)
from space.display import safe_text
from trainer.inference.model import BASE
from trainer.hub.space_settings import SpaceConfig


def with_notes(above, text: str, below=None) -> str:
    """An answer between its notes as one markdown block: the correction above it, the warning and sources under
    it (as `answer_with_notes` yields them)."""
    shown = "".join(f"**{note['metadata']['title']}**\n\n{note['content']}\n\n---\n\n" for note in above or [])
    shown += safe_text(text)
    for note in below or []:
        shown += f"\n\n---\n**{note['metadata']['title']}**\n\n{note['content']}"
    return shown


def build_compare_tab(engine, cfg: SpaceConfig, choices: list[tuple[str, str]], default_adapter: str,
                      gen_inputs: list[Any], grounding=None) -> None:
    """The Compare tab with its `compare` endpoint (base on the left, the default adapter on the right); a false
    premise's correction shows above both answers as soon as the question is sent.
    `gen_inputs` are the shared system prompt, temperature, top-p and max-new-tokens components."""
    import gradio as gr

    def compare(question, adapter_a, adapter_b, ground, system_prompt, temperature, top_p, max_new_tokens):
        # API callers may send null for any input: each then takes the value its control starts with.
        question = check_question(question, cfg.limits)
        adapter_a = check_adapter(adapter_a, engine, BASE)
        adapter_b = check_adapter(adapter_b, engine, default_adapter)
        system_prompt = check_system_prompt(system_prompt, cfg)
        ground = ground_default(ground, grounding, BASE)  # the base's default is `grounding.enabled`, as the box
        settings = decoding(cfg.generation, temperature, top_p, max_new_tokens)
        for adapter in (adapter_a, adapter_b):  # the same bound as the chat: within each model's context
            messages, _ = fit_prompt(engine, system_prompt, [], question, adapter, settings.max_new_tokens,
                                     cfg.limits)
        # The correction (the same question, so the same for both) shows above both answers from the first yield,
        # before either starts streaming; the right one waits under it while the left one streams.
        shown_a = ""
        for above, text, below in answer_with_notes(engine, grounding, messages, adapter_a, ground, settings):
            shown_a = with_notes(above, text, below)
            yield shown_a, with_notes(above, "")
        for above, text, below in answer_with_notes(engine, grounding, messages, adapter_b, ground, settings):
            yield shown_a, with_notes(above, text, below)

    with gr.Tab("Compare"):
        gr.Markdown("The same question answered by two adapters on the same base, one after the other.")
        compare_question = gr.Textbox(label="Question", elem_id="compare-question", max_lines=8)
        with gr.Row():
            adapter_a = gr.Dropdown(choices, value=BASE, label="Left", elem_id="adapter-a")
            adapter_b = gr.Dropdown(choices, value=default_adapter, label="Right", elem_id="adapter-b")
        ground = gr.Checkbox(grounding.settings.enabled if grounding else False, interactive=grounding is not None,
                             label="Ground both answers in the knowledge base", elem_id="compare-ground")
        compare_btn = gr.Button("Compare", variant="primary", elem_id="compare")
        with gr.Row():
            answer_a = gr.Markdown(sanitize_html=True, elem_id="answer-a")
            answer_b = gr.Markdown(sanitize_html=True, elem_id="answer-b")
        compare_btn.click(compare, [compare_question, adapter_a, adapter_b, ground, *gen_inputs],
                          [answer_a, answer_b], api_name="compare")
