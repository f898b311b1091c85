"""The app as it runs on a ZeroGPU Space, for tests/test_zerogpu.py: started in its own process with
`SPACES_ZERO_GPU=true` (the real `spaces` package then patches torch, which must not happen in the test process) and
`SPACES_ZERO_DEVICE_API_URL` pointing at the test's stand-in for ZeroGPU's device API.

Everything of `spaces` runs as on a Space: the decorator, the duration callable, scheduling over HTTP, the forked GPU
worker and the streaming of its results back through pickled queues, the quota message. Only the lowest, CUDA layer
is replaced, because this machine has no GPU and its torch is the CPU build (which `spaces`' torch patching cannot
load): `spaces.zero.torch` is the package's own no-op twin for a Python without torch (`cpu_only_zero_torch`), so
nothing is patched, packed or moved onto a GPU. The model is a scripted stand-in streaming a fixed answer word by
word, so the test measures the ZeroGPU path, not a model.

    python tests/zerogpu_space.py    # prints "[app] running on URL in pid N"
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ANSWER = "Yes: health insurance is compulsory for students in Germany, and you need it to enrol."


class ScriptedEngine:
    """Streams ANSWER word by word, naming the adapter and the process it ran in."""

    adapter_names = ["demo/stage1", "demo/stage2"]
    base_model = "smollm2-135m-instruct"
    load_in_4bit = True
    serving = "4-bit NF4"
    is_demo = True
    refused: dict[str, str] = {}
    load_seconds = 0.0

    def adapter_revision(self, adapter):
        return None

    def stream(self, messages, adapter="base", settings=None, stop=None, stats=None):
        import os

        text = f"[{adapter} in pid {os.getpid()}]"
        for word in ANSWER.split(" "):
            text += " " + word
            if stats is not None:
                stats.new_tokens += 1
            yield text


def cpu_only_zero_torch():
    """`spaces.zero.torch`, the package's CUDA layer, as the package itself defines it where torch is missing: every
    function a no-op (nothing to patch, pack or move onto a GPU)."""
    import types

    layer = types.ModuleType("spaces.zero.torch")
    for name in ("enter_mode", "patch", "unpatch", "init", "move"):
        setattr(layer, name, lambda *args, **kwargs: None)
    layer.pack = layer.size = lambda *args, **kwargs: 0
    layer.is_in_bad_fork = lambda *args, **kwargs: False
    return layer


def main() -> int:
    from space import zerogpu

    assert zerogpu.on_zerogpu(), "run with SPACES_ZERO_GPU=true"
    sys.modules["spaces.zero.torch"] = cpu_only_zero_torch()
    zerogpu.prepare()

    import os

    from app import build_app
    from space.registry import AdapterRegistry, RegisteredAdapter
    from trainer.hub.space_settings import load_space_config

    cfg = load_space_config(None, ["grounding.enabled=false", "grounding.check_answers=false",
                                   "grounding.check_premises=false", "feedback.enabled=false"])
    registry = AdapterRegistry([RegisteredAdapter(name, str(REPO), True) for name in ScriptedEngine.adapter_names])
    engine = zerogpu.serve_on_zerogpu(ScriptedEngine())
    demo = build_app(registry, engine, None, cfg)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    print(f"[app] running on {url} in pid {os.getpid()}", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
