"""The hardware a pushed Space is written for (`push --space-hardware`): its README header and its requirements.txt.

One row per hardware in `HARDWARE`: the Hub's hardware flavor for `suggested_hardware` (huggingface_hub's
`SpaceHardware` values), a line the Space's README carries, why the requirements differ, and the torch requirement
lines that replace the pinned `torch==` line of the tool's own requirements.txt (every other pin is kept):

- `t4-small` (the default): the pinned torch as PyPI serves it for Linux, a CUDA 12 build with kernels for Turing
  (sm_75, the T4's). The app computes in fp16 there (`trainer.train.device`: no bfloat16 below compute capability 8.0).
- `zero-gpu`: a torch ZeroGPU lists as supported (`ZEROGPU_TORCH`; ZeroGPU's docs list 2.1 to 2.11, the pinned
  2.13 is not among them) and the `spaces` package, which runs each answer inside `spaces.GPU` (`space/zerogpu.py`).
- `cpu-basic`: the CPU build of the pinned torch from PyTorch's CPU index (a few hundred MB instead of the CUDA
  build's several GB); the app serves the embedded demo model there unless `BASE_MODEL` names another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer import REPO_ROOT

ZEROGPU_TORCH = "2.11.0"
"""The torch the ZeroGPU Space installs: the newest in ZeroGPU's supported list (its docs: 2.1.0 to 2.11)."""
SPACES_PIN = "spaces==0.51.3"
"""The `spaces` package the ZeroGPU Space installs (the version tests/test_zerogpu.py runs)."""
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_HARDWARE = "t4-small"
TOOL_TORCH_NOTE = ("# torch ", "# version first")
"""The first words of the lines of requirements.txt telling a developer how to install torch on their machine."""


@dataclass(frozen=True)
class SpaceHardware:
    key: str
    """What `push --space-hardware` takes."""
    flavor: str
    """`suggested_hardware` in the Space's README header (the Hub's hardware flavor)."""
    runs_on: str
    """One sentence for the Space's README: where it runs and in which precision."""
    why: str
    """Why its requirements are what they are (printed by `push`)."""

    def torch_lines(self, pinned: str) -> list[str]:
        """The requirement lines replacing `torch==<pinned>`."""
        if self.key == "zero-gpu":
            return [f"# ZeroGPU lists torch 2.1.0 to {ZEROGPU_TORCH} as supported; the tool is tested on {pinned}",
                    f"torch=={ZEROGPU_TORCH}", f"{SPACES_PIN}  # runs each answer inside spaces.GPU (space/zerogpu.py)"]
        if self.key == "cpu-basic":
            return ["# the CPU build of torch, from PyTorch's CPU index (not the several-GB CUDA build)",
                    f"--extra-index-url {CPU_INDEX}", f"torch=={pinned}+cpu"]
        return ["# PyPI's Linux wheel of torch is the CUDA 12 build, with kernels for Turing (sm_75): the T4",
                f"torch=={pinned}"]


HARDWARE: dict[str, SpaceHardware] = {h.key: h for h in (
    SpaceHardware("t4-small", "t4-small",
                  "This Space is written for a **T4** GPU (`t4-small`): the 4-bit base computes in float16 there "
                  "(a T4 has no bfloat16).",
                  "a T4 (compute capability 7.5): the CUDA build of torch, fp16 compute"),
    SpaceHardware("zero-gpu", "zero-a10g",
                  "This Space runs on **ZeroGPU**: a GPU is lent for each answer (`spaces.GPU`, a daily quota per "
                  "visitor), the 4-bit base computes in bfloat16 on it. Select ZeroGPU in the Space's settings.",
                  f"ZeroGPU (hardware flavor zero-a10g, an H200 slice lent per call): torch {ZEROGPU_TORCH}, which "
                  "ZeroGPU supports, and the spaces package"),
    SpaceHardware("cpu-basic", "cpu-basic",
                  "This Space is written for the free **CPU** hardware (`cpu-basic`): it serves the embedded demo "
                  "model (SmolLM2-135M-Instruct) unless `BASE_MODEL` names another, and its answers are slow.",
                  "the free CPU (cpu-basic): the CPU build of torch from PyTorch's CPU index"),
)}


def space_requirements(hardware: SpaceHardware, source: str | None = None) -> str:
    """The Space's requirements.txt: the tool's own (`source`, default the repository's requirements.txt) with its
    `torch==` line replaced by the hardware's."""
    text = source if source is not None else (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8")
    lines, replaced = [], False
    for line in text.splitlines():
        match = re.match(r"^torch==([^\s#]+)", line)
        if match:
            lines += hardware.torch_lines(match.group(1).split("+")[0])
            replaced = True
        elif not line.startswith(TOOL_TORCH_NOTE):  # the tool's note on installing torch; the hardware's replaces it
            lines.append(line)
    if not replaced:
        raise ValueError("requirements.txt: no `torch==` line to write the Space's torch from")
    return "\n".join(lines) + "\n"
