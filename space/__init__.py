"""The Gradio Space's parts: adapter registry, inference engine (one base, many adapters), feedback store."""
