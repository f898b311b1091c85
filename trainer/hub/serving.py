"""The commands that serve a run's adapters on an inference engine (vLLM, TGI) behind an OpenAI-compatible API:
written into the model cards and the Space's README by `push`, printed (or started) by `python -m trainer serve`.

Each adapter is served on the base it was trained on and chosen by the request's `model` field, which is what the
app's `engine: openai` sends (`space/remote_engine.py`): vLLM names it as `--lora-modules name=source` says, TGI by
its repo id (or by its name when served from a folder).

The base's dtype follows the precision rule training and the app use (`trainer.train.device`): bfloat16 where it is
native (compute capability 8.0+), float16 on older GPUs (T4, V100, P100), always written out: left to the engine,
the base's config asks for bfloat16, which a T4 only emulates (or some vLLM versions refuse). The printed commands
run on a machine this one cannot see, so they say bfloat16 with a comment line naming the switch for older cards;
`--start` decides from the device here.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from trainer import REPO_ROOT
from trainer.train.device import DeviceInfo, native_bf16

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""vLLM accepts only these as `--max-lora-rank`; a run's rank is rounded up to the next one."""
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"
PORT = 8000


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter as an engine loads it: its name and where its files are (a Hub repo, or a local folder)."""

    name: str
    source: str
    local: bool = False

    @property
    def tgi_name(self) -> str:
        """The `model` name TGI serves it under."""
        return self.name if self.local else self.source


def _rank(lora_rank: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= lora_rank), lora_rank)


def dtypes(device: DeviceInfo | None) -> dict[str, str] | None:
    """`--dtype` for vLLM and TGI on this device (None: a GPU not known here, bfloat16 with a note; the CPU gets
    none, vLLM's CPU build picks its own): bfloat16 where native, float16 on GPUs older than Ampere."""
    if device is not None and device.kind != "cuda":
        return None
    if device is None or native_bf16(device):
        return {"vllm": "bfloat16", "tgi": "bfloat16"}
    return {"vllm": "half", "tgi": "float16"}


DTYPE_NOTE = ("# --dtype bfloat16 needs compute capability 8.0+ (A10G, L4, A100, H100); on a T4, V100 or P100 (no "
              "bfloat16) write --dtype {older} instead\n")


def vllm_args(base_model: str, adapters: Sequence[ServedAdapter], lora_rank: int,
              device: DeviceInfo | None = None) -> list[str]:
    """`vllm serve` with every adapter on the base, as an argument list, in the dtype `dtypes(device)` says."""
    dtype = dtypes(device)
    return ["vllm", "serve", base_model, "--port", str(PORT), *(["--dtype", dtype["vllm"]] if dtype else []),
            "--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(_rank(lora_rank)),
            "--lora-modules", *(f"{a.name}={a.source}" for a in adapters)]


def engine_commands(base_model: str, adapters: Sequence[ServedAdapter], lora_rank: int,
                    downloads: Sequence[str] = (), device: DeviceInfo | None = None) -> dict[str, str]:
    """The shell commands (keyed `vllm` and `tgi`), each preceded by `downloads` (lines fetching the adapters), in
    the dtype `dtypes(device)` says; for a GPU not known here (`device` None), with the line naming float16's switch."""
    before = "".join(line + "\n" for line in downloads)
    dtype = dtypes(device) or {}
    note = {e: DTYPE_NOTE.format(older="half" if e == "vllm" else "float16") if device is None else "" for e in dtype}
    flag = {e: f" --dtype {d}" for e, d in dtype.items()}
    modules = " ".join(shlex.quote(f"{a.name}={a.source}") for a in adapters)
    vllm = (f"{before}{note.get('vllm', '')}vllm serve {shlex.quote(base_model)} --port {PORT}{flag.get('vllm', '')} "
            f"\\\n  --enable-lora --max-loras {len(adapters)} --max-lora-rank {_rank(lora_rank)} \\\n  --lora-modules "
            f"{modules}")
    mounts = "".join(f"-v {_host_path(a.source)}:/data/{a.name.replace('/', '-')} " for a in adapters if a.local)
    tgi_adapters = ",".join(f"{a.name}=/data/{a.name.replace('/', '-')}" if a.local else a.source for a in adapters)
    tgi = (f"{before}{note.get('tgi', '')}docker run --gpus all --shm-size 1g -p {PORT}:80 {mounts}\\\n  "
           f"-e LORA_ADAPTERS={tgi_adapters} \\\n  {TGI_IMAGE} --model-id {shlex.quote(base_model)}{flag.get('tgi', '')}")
    return {"vllm": vllm, "tgi": tgi}


def hub_commands(base_model: str, adapters: Sequence[tuple[str, str]], lora_rank: int,
                 revision: str | None = None) -> tuple[dict[str, str], list[ServedAdapter]]:
    """The commands serving pushed adapters ((name, repo) pairs), and the adapters as served. The engines fetch a
    repo's main branch; with `revision`, each adapter is downloaded at it first and served from that folder."""
    if not revision:
        served = [ServedAdapter(name, repo) for name, repo in adapters]
        return engine_commands(base_model, served, lora_rank), served
    served = [ServedAdapter(name, f"adapters/{name}", local=True) for name, _ in adapters]
    downloads = [f"hf download {repo} --revision {revision} --local-dir adapters/{name}" for name, repo in adapters]
    return engine_commands(base_model, served, lora_rank, downloads), served


def _host_path(source: str) -> str:
    return source if Path(source).is_absolute() else f"$PWD/{source}"


VLLM_SCRIPT = REPO_ROOT / "scripts" / "vllm.sh"
"""Sets up vLLM (the CPU build) in its own virtualenv and starts its OpenAI-compatible server."""


def local_vllm_command(model: str, adapters: Sequence[ServedAdapter], lora_rank: int, *, served_name: str | None = None,
                       port: int = PORT, extra: Sequence[str] = (), device: DeviceInfo | None = None) -> list[str]:
    """`scripts/vllm.sh serve` for a base (a local folder or a Hub id) and its adapters, listening on 127.0.0.1: the
    base answers to `served_name` (default: `model`), each adapter to its name; on a GPU `device`, in its dtype."""
    dtype = dtypes(device) if device is not None else None
    args = ["bash", str(VLLM_SCRIPT), "serve", model, "--served-model-name", served_name or model,
            "--host", "127.0.0.1", "--port", str(port), *(["--dtype", dtype["vllm"]] if dtype else []), *extra]
    if adapters:
        args += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(_rank(lora_rank)),
                 "--lora-modules", *(f"{a.name}={a.source}" for a in adapters)]
    return args


def start_vllm(model: str, adapters: Sequence[ServedAdapter], lora_rank: int, served_name: str | None = None) -> int:
    """Run vLLM here (`scripts/vllm.sh serve`, which creates `.venv-vllm` first if needed) until it stops; its exit
    code. The dtype is this machine's (`dtypes`): none on the CPU, where the script's vLLM build runs."""
    from trainer.train.device import detect_device

    device = detect_device()
    return subprocess.run(local_vllm_command(model, adapters, lora_rank, served_name=served_name,
                                             device=device)).returncode
