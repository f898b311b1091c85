"""The Compare tab: one question answered by two adapters on the same base, one after the other, streamed."""

from typing import Any

from space.chat_tab import check_adapter, check_question, decoding, prompt_messages
from space.display import safe_text
from trainer.modeling import BASE
from trainer.space_settings import SpaceConfig


def build_compare_tab(engine, cfg: SpaceConfig, choices: list[tuple[str, str]], default_adapter: str,
                      gen_inputs: list[Any]) -> None:
    """The Compare tab with its `compare` endpoint (base on the left, the default adapter on the right).
    `gen_inputs` are the shared system prompt, temperature, top-p and max-new-tokens components."""
    import gradio as gr

    def compare(question, adapter_a, adapter_b, system_prompt, temperature, top_p, max_new_tokens):
        question = check_question(question, cfg.limits)
        adapter_a, adapter_b = check_adapter(adapter_a, engine), check_adapter(adapter_b, engine)
        messages = prompt_messages(system_prompt, [{"role": "user", "content": question}])
        settings = decoding(cfg.generation, temperature, top_p, max_new_tokens)
        answer_a = ""
        for answer_a in engine.stream(messages, adapter_a, settings):
            yield safe_text(answer_a), ""
        for answer_b in engine.stream(messages, adapter_b, settings):
            yield safe_text(answer_a), safe_text(answer_b)

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
