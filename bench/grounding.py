"""Grounding at serving time: KB index build, retrieval latency, the live answer check, and time to first token with
and without the retrieved passages in the prompt, side by side in one run.

    python bench/grounding.py [--runs-dir runs] [--questions 24] [--new-tokens 16] [--out bench/results/grounding.json]

1. index build: `Retriever(kb)` over every KB passage (the KB already loaded), best of 5;
2. retrieval: `Retriever.search` on every rubric question and on hostile input (10,000 characters, another script),
   p50 / p95 over repeated passes;
3. the live answer check: `Auditor.check_answer` on each question with a counselling-length answer, p50 / p95;
4. time to first token through the app's engine (demo model, 4-bit, an adapter from `--runs-dir` if there is one),
   the same questions asked ungrounded and grounded alternately, so both sides see the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ANSWER = ("## Next steps\n\n- Check the university's admissions page for the documents and deadlines.\n- Book your "
          "English test early; most universities accept IELTS Academic or TOEFL iBT.\n- Budget for tuition, "
          "living costs and health insurance before you apply for the visa.\n- Keep copies of everything.\n") * 2


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--questions", type=int, default=24, help="rubric questions for the time-to-first-token part")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--passes", type=int, default=20, help="retrieval / check passes over the questions")
    parser.add_argument("--no-engine", action="store_true", help="skip the time-to-first-token part (no model)")
    parser.add_argument("--out", default="bench/results/grounding.json")
    args = parser.parse_args(argv)

    import yaml

    from trainer.kb.audit import Auditor
    from trainer.kb.loader import load_kb
    from trainer.kb.retrieve import Retriever

    started = time.perf_counter()
    kb = load_kb(REPO / "data" / "kb")
    kb_seconds = time.perf_counter() - started
    builds = []
    for _ in range(5):
        retriever = Retriever(kb)
        builds.append(retriever.build_seconds)
    questions = [q["question"] for q in yaml.safe_load((REPO / "data" / "eval" / "questions.yaml")
                                                       .read_text(encoding="utf-8"))["questions"]]
    hostile = ["Which documents do I need for a UK Student visa? " + "please " * 1500,
               "আমি কানাডায় পড়তে চাই, ভিসার জন্য কী লাগবে? " * 40, "x" * 10_000]
    search, search_hostile, check = [], [], []
    auditor = Auditor(kb)
    for _ in range(args.passes):
        for q in questions:
            t = time.perf_counter()
            retriever.search(q)
            search.append(time.perf_counter() - t)
            conversation = [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]
            t = time.perf_counter()
            auditor.check_answer(conversation)
            check.append(time.perf_counter() - t)
        for q in hostile:
            t = time.perf_counter()
            retriever.search(q)
            search_hostile.append(time.perf_counter() - t)
    result = {"command": "python bench/grounding.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "kb_version": kb.version.get("version"), "passages": len(retriever.passages),
              "kb_load_s": round(kb_seconds, 3), "index_build_s_best_of_5": round(min(builds), 4),
              "retrieval": percentiles(search), "retrieval_hostile_input": percentiles(search_hostile),
              "answer_check": percentiles(check)}

    if not args.no_engine:
        from space.engine import InferenceEngine
        from trainer.inference.engine import StreamStats
        from space.registry import AdapterRegistry
        from trainer.inference.model import GenerationSettings
        from trainer.kb.retrieve import grounded_messages
        from trainer.hub.space_settings import DEFAULT_SYSTEM_PROMPT, load_space_config

        cfg = load_space_config(None, [f"runs_dir={args.runs_dir}"])
        engine = InferenceEngine("smollm2-135m-instruct", AdapterRegistry.from_config(cfg, REPO)).load()
        adapter = engine.adapter_names[-1] if engine.adapter_names else "base"
        settings = GenerationSettings(max_new_tokens=args.new_tokens, temperature=0)
        sides = {"ungrounded": [], "grounded": []}
        prompt_tokens = {"ungrounded": [], "grounded": []}
        for q in questions[:args.questions]:
            messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": q}]
            for side in ("ungrounded", "grounded"):
                t = time.perf_counter()
                prompt = grounded_messages(messages, retriever.search(q)) if side == "grounded" else messages
                stats = StreamStats()
                for _ in engine.stream(prompt, adapter, settings, stats=stats):
                    pass
                # first token as the visitor sees it: retrieval included on the grounded side
                sides[side].append((time.perf_counter() - t) - stats.total_s + stats.first_token_s)
                prompt_tokens[side].append(stats.prompt_tokens)
        result["time_to_first_token"] = {
            "adapter": adapter, "questions": len(sides["grounded"]), "new_tokens": args.new_tokens,
            **{side: {**percentiles(values), "mean_prompt_tokens": round(statistics.mean(prompt_tokens[side]))}
               for side, values in sides.items()},
            "ratio_p50_grounded_over_ungrounded": round(statistics.median(sides["grounded"])
                                                        / statistics.median(sides["ungrounded"]), 2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
