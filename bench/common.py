"""What the benchmarks share: what a result is recorded with (the device, peak GPU memory, library versions), and
the child processes a benchmark runs each measured side in (each prints one `RESULT {json}` line), how its results
are saved and printed, and the visitor threads a load test starts together.

    from bench.common import answer_child, device_info, gpu_memory, spawn_child, versions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent

LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "liger-kernel")
"""The packages whose versions a result is recorded with."""


def gpu_memory() -> dict:
    """Peak GPU memory allocated and reserved by this process, in GiB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_gpu_allocated_gb": None, "peak_gpu_reserved_gb": None}
    return {"peak_gpu_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def device_info() -> dict:
    """The CUDA device's name and CUDA version, or `cpu` with PyTorch's thread count."""
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return {"device": "cpu", "cuda": None, "threads": torch.get_num_threads()}


def versions() -> dict:
    """Python's version and each of LIBRARIES' (None where it is not installed)."""
    from trainer.train.lineage import library_versions

    return library_versions(LIBRARIES)


def spawn_child(kind: str, spec: dict, log: bool, script: str | Path) -> dict:
    """Run `script --child KIND spec.json` (offline, from the repo root) and return the dict its `RESULT ` line
    carries, echoing its output when `log`; a child that fails gives `{"side": kind, "error": ...}`."""
    spec_path = Path(spec["work"]) / f"spec-{kind}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), "--child", kind, str(spec_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result, tail = None, []
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            continue
        tail = (tail + [line])[-60:]
        if log:
            sys.stdout.write(f"  [{kind}] {line}")
    proc.wait()
    if proc.returncode != 0 or result is None:
        return {"side": kind, "error": f"exit {proc.returncode}: " + "".join(tail)[-3000:]}
    return result


def answer_child(args: argparse.Namespace, run) -> bool:
    """In a child process (`--child KIND SPEC`): `run(kind, spec)`, print its RESULT line, return True."""
    if not args.child:
        return False
    kind, spec_path = args.child
    print("RESULT " + json.dumps(run(kind, json.loads(Path(spec_path).read_text()))), flush=True)
    return True


def append_results(path: Path | None, rows: list[dict], command: bool = False) -> None:
    """Append each result row to the JSON-lines file `path` (a script's --out), its parent made first; with
    `command`, each row also names the command line that produced it. Nothing when `path` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"command": " ".join(sys.argv), **row} if command else row) + "\n")


def result_saver(results: dict, stem: Path, markdown: Callable[[dict], str],
                 ready: Callable[[dict], bool] = lambda results: True) -> Callable[[], None]:
    """A `save()` that writes `results` to `stem`.json and, once `ready(results)`, `markdown(results)` to `stem`.md:
    called after every phase, so a benchmark that dies midway leaves what it measured."""
    def save() -> None:
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        if ready(results):
            stem.with_suffix(".md").write_text(markdown(results))
    return save


def finish(results: dict, save: Callable[[], None], markdown: Callable[[dict], str], stem: Path, started: float,
           tag: str) -> None:
    """Record the library versions and the wall time since `started`, save, and print the markdown and the paths."""
    results["versions"] = versions()
    results["wall_seconds"] = round(time.time() - started, 1)
    save()
    print(markdown(results))
    print(f"[{tag}] wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')} in "
          f"{results['wall_seconds']:.0f}s", flush=True)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table: the header, its rule, then one line per row (each cell as `str` gives it)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def run_together(target: Callable[[int], None], count: int) -> float:
    """Start `target(0)` ... `target(count - 1)` in threads at once; the seconds until the last one finished."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started
