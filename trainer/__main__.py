"""`python -m trainer ...`: the command line. Heavy libraries load inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _add_job_args(parser: argparse.ArgumentParser, example: str, override: str) -> None:
    parser.add_argument("--config", help=f"settings YAML, e.g. {example}; the flags below override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override of a settings key, repeatable: --set {override}")


def _add_job_flags(parser: argparse.ArgumentParser, settings: type) -> None:
    """One flag per field of a command's settings dataclass (`trainer.jobs`), built from the field: `--field-name`
    (or the stem its `flag(name=...)` gives), the type its annotation names, the help its docstring and default.
    A bool is a `--x/--no-x` switch (a `no_x` field a plain `--no-x`); a tuple takes as many values as its default
    has, or one per repeated flag with `action="append"`; `positional` and `required` are as argparse has them.
    Flags stay out of the parsed arguments unless typed (argparse.SUPPRESS), so a flag overrides the --config file
    (and the dataclass's default) only when the user gave it."""
    import dataclasses
    import types
    import typing

    from trainer.typed_yaml import field_docs

    docs = field_docs(settings)
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        if f.name == "source":  # set by the loader, not by the user
            continue
        options = dict(f.metadata.get("flag", {}))
        positional, aliases = options.pop("positional", False), options.pop("aliases", ())
        stem = "--" + options.pop("name", f.name).replace("_", "-")
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`: a flag always gives an X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        help_text = docs.get(f.name, "")
        if f.default not in (None, ()) and not options.get("required") and not positional and \
                options.get("action") != "store_true":  # a null default is explained in the docstring
            shown = (" ".join(map(str, f.default)) if isinstance(f.default, tuple) else
                     str(f.default).lower() if isinstance(f.default, bool) else f.default)
            help_text += f" Default: {shown}."
        if "action" in options:
            pass  # append, store_true: as given
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(type=typing.get_args(kind)[0], nargs=len(f.default) if f.default else "+")
        elif kind is not str:
            options["type"] = kind
        if positional:
            parser.add_argument(f.name, help=help_text.replace("%", "%%"), **options)
        else:
            parser.add_argument(stem, *aliases, dest=f.name, default=argparse.SUPPRESS,
                                help=help_text.replace("%", "%%"), **options)


def _typed_flags(args: argparse.Namespace, settings: type) -> dict:
    """The flags of a settings type that were given on this command line (the others are absent)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(settings)}
    return {key: value for key, value in vars(args).items() if key in names}


def commands() -> dict[str, tuple[type, str]]:
    """Every command's settings dataclass (`trainer.jobs`) and its one-line help, in the order `--help` lists them."""
    from trainer import jobs

    return {
        "train": (jobs.TrainJob, "train one stage or the whole pipeline"),
        "validate": (jobs.ValidateJob, "check a config and its data without training"),
        "plan": (jobs.PlanJob, "precision, kernels and peak memory of each stage on this GPU or a named one, without "
                               "loading a model: does the recipe fit?"),
        "push": (jobs.PushJob, "publish a run's adapters, datasets and Space to the Hugging Face Hub"),
        "generate": (jobs.SynthJob, "generate grounded, audited synthetic dialogues for stage 1"),
        "audit": (jobs.AuditJob, "audit a dataset file against the rules and the knowledge base"),
        "check": (jobs.CheckJob, "check questions (and answers) from any chatbot or FAQ: the false premises the "
                                 "knowledge base corrects, and whether each answer carries the correction"),
        "eval": (jobs.EvalJob, "compare every adapter of a run with its base: metrics, rubric, judge, gate"),
        "serve": (jobs.ServeJob, "print (or, with --start, run vLLM with) the command serving a run's adapters on an "
                                 "OpenAI-compatible engine"),
        "export-feedback": (jobs.ExportJob, "turn the app's labelled feedback into stage-2 data"),
    }


SETTINGS_FILES = {"generate": ("configs/synth/gemini.yaml", "n=20"), "eval": ("configs/eval/quick.yaml", "limit=10")}
"""The commands whose settings may also come from a YAML file (`--config`, `--set`), with an example of each."""


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per command, its flags built from its settings dataclass (`_add_job_flags`)."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Two-stage QLoRA fine-tuning of an open LLM into a study-abroad counsellor.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (settings, help_text) in commands().items():
        command = sub.add_parser(name, help=help_text)
        if name in SETTINGS_FILES:
            _add_job_args(command, *SETTINGS_FILES[name])
        _add_job_flags(command, settings)
    return parser


def job_of(args: argparse.Namespace):
    """The typed settings of a command that takes flags only, from the flags given (the rest: the defaults)."""
    settings, _ = commands()[args.command]
    return settings(**_typed_flags(args, settings))


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.train.config import load_config
    from trainer.train.stage import run_pipeline

    cfg = load_config(args.config, args.overrides)
    stage_dirs = run_pipeline(cfg, args.stage, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, the main process says it once
        print("finished: " + ", ".join(str(d) for d in stage_dirs))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from trainer.train.config import load_config
    from trainer.hub.api import offline_mode
    from trainer.train.stage import plan_pipeline

    cfg = load_config(args.config, args.overrides)
    # The planner `train` runs, offline when the Hub is: what it cannot reach is listed, not pretended.
    plan = plan_pipeline(cfg, offline=offline_mode() or not hub_reachable(), keep_going=True)
    print(f"config {cfg.source}: ok ({', '.join(cfg.stages)}; base {cfg.model.name}; "
          f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha}; max_length {cfg.max_length})")
    if plan.template is not None:
        print(f"chat template: {plan.template.family} training template renders identically to the model's own "
              f"({plan.renderings} renderings compared)")
    if plan.stages:
        precision = next(iter(plan.stages.values())).precision
        print(f"precision: {precision.name} ({precision.reason})")
    for name in cfg.stages:
        if name in plan.stages:
            data = plan.stages[name].data
            print(f"stage {name}: {data.summary()}")
            if plan.stages[name].memory_note:
                print(f"  {plan.stages[name].memory_note}")
            for report in data.reports:
                for error in report.errors[:20]:
                    print(f"  skipped {error}")
    for item in plan.unchecked:
        print(f"not checked: {item}")
    if plan.failed:
        # A data failure is an error the user can fix, as everywhere else: one line saying what failed (the rows'
        # summary), then the rows it lists, and exit code 2.
        for name, problem in plan.failed.items():
            print(f"error: stage {name}: {problem}", file=sys.stderr)
        return 2
    print("valid" + (" (with the items above not checked)" if plan.unchecked else ""))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from trainer.train.config import load_config
    from trainer.train.device import detect_device, named_gpu, with_memory
    from trainer.train.memory_plan import plan_memory, render_plan

    cfg = load_config(args.config, args.overrides)
    device = named_gpu(args.gpu) if args.gpu else detect_device()
    if args.memory is not None:
        if args.memory <= 0:
            print(f"error: --memory {args.memory:g}: must be positive (GB)", file=sys.stderr)
            return 2
        device = with_memory(device, args.memory)
    plan = plan_memory(cfg, device, detected=not args.gpu, auto_fit=True if args.fit else None)
    print(json.dumps(plan.to_json(), indent=2) if args.json else render_plan(plan))
    return 0 if plan.fits else 2


def hub_reachable() -> bool:
    """Whether huggingface.co answers on its HTTPS port within 3 seconds."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def cmd_push(args: argparse.Namespace) -> int:
    from trainer.hub.push import run_push

    plans = run_push(args.run, namespace=args.namespace, stages=args.stage, private=args.private,
                     revision=args.revision, dry_run=args.dry_run, out_dir=args.out, force=args.force,
                     datasets=not args.no_datasets, space=not args.no_space, endpoint=args.endpoint,
                     space_hardware=args.space_hardware)
    if args.dry_run:
        print("dry run: nothing was uploaded; the folders above are exactly what would be")
        for plan in plans:
            print(f"\n{plan.repo_type} {plan.repo_id} ({plan.title}):")
            for path in plan.files():
                print(f"  {path.relative_to(plan.folder)}  ({path.stat().st_size:,} bytes)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The vLLM and TGI commands serving the run's adapter folders, and the app's settings for them; with --start,
    vLLM itself (scripts/vllm.sh), on the local copy of the base where the run trained on one."""
    from pathlib import Path

    from trainer.train.demo_model import demo_model_path, is_demo_model
    from trainer.train.rundir import adapter_name, base_hub_id, finished_stages, read_stage
    from trainer.hub.serving import ServedAdapter, engine_commands, start_vllm

    run_dir = Path(args.run)
    stages = [read_stage(run_dir, s) for s in (args.stage or finished_stages(run_dir))]
    base = base_hub_id(stages[-1])[0]
    # Each adapter under the name the app's registry gives a run's stage (`demo/stage2`), which the eval asks for too.
    served = [ServedAdapter(adapter_name(run_dir.resolve().name, s.name), str(s.adapter_dir.resolve()), local=True)
              for s in stages]
    rank = max(s.cfg.lora.r for s in stages)
    name = stages[-1].cfg.model.name
    # The weights the adapters were trained on, where they are on this machine (the demo model's converted copy, a
    # local folder); else the Hub id, which vLLM downloads. The base answers to the name the app's settings use.
    local = str(demo_model_path()) if is_demo_model(name) else (name if Path(name).is_dir() else base)
    adapters = ", ".join(f"{{name: {a.name}, path: {a.source}}}" for a in served)
    app = (f"python app.py --set engine=openai --set openai.base_url=http://127.0.0.1:8000/v1 \\\n"
           f"  --set openai.base_served_name={base} --set limits.concurrency=16 --set 'adapters=[{adapters}]'")
    if args.start:
        print(f"# starting vLLM (scripts/vllm.sh) on {local}; then, in another shell:\n{app}", flush=True)
        return start_vllm(local, served, rank, served_name=base)
    gpu = None
    if args.gpu:  # the card the printed commands are for: its dtype by the rule training and the app use
        from trainer.train.device import named_gpu

        gpu = named_gpu(args.gpu)
    commands = engine_commands(base, served, rank, device=gpu)
    print(f"# vLLM\n{commands['vllm']}\n\n# TGI\n{commands['tgi']}\n\n# then the app, on the server above:\n{app}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from trainer.jobs import SynthJob, load_synth_job

    job = load_synth_job(args.config, args.overrides, _typed_flags(args, SynthJob)).resolved()
    if not job.base_url:
        # The local model decodes on the CPU: idle OpenMP threads sleep instead of spinning. On 2 cores shared with
        # other work, spinning threads made decoding 3-10x slower; alone, sleeping costs ~25%. Before torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from dataclasses import replace
    from pathlib import Path

    from trainer.kb.loader import load_kb
    from trainer.inference.endpoint import EndpointEngine
    from trainer.inference.model import BASE
    from trainer.jobs.synth import (LocalProvider, SynthSettings, build_plan, finish, generate, llm_judge,
                                    load_exemplars, load_followups)

    kb = load_kb(job.kb)
    exemplars = load_exemplars(job.exemplars) if job.exemplars else []
    plan = build_plan(kb, job.n, seed=job.seed, false_premise_share=job.false_premise_share, exemplars=exemplars,
                      turns=(2 * job.exchanges[0], 2 * job.exchanges[1]), followups=load_followups(job.followups))
    if job.base_url:
        engine = EndpointEngine(job.base_url, {BASE: job.model}, api_key=os.environ.get(job.api_key_env),
                                concurrency=job.concurrency, timeout=job.timeout)
    else:
        engine = LocalProvider(job.model)
    decoding = replace(LocalProvider.DECODING, max_new_tokens=job.max_tokens, temperature=job.temperature)
    settings = SynthSettings(decoding=decoding, concurrency=job.concurrency, price_in_per_m=job.price_in,
                             price_out_per_m=job.price_out)
    out = Path(job.out)
    print(f"[generate] {len(plan)} conversations planned ({sum(1 for p in plan if p.false_premise)} false premise) "
          f"with {engine.name}; writing {out / 'raw.jsonl'}", flush=True)
    run = generate(plan, engine, out / "raw.jsonl", settings, kb_version=kb.version)
    if run.interrupted:
        print(f"[generate] interrupted: {len(run.rows)} of {len(plan)} conversations are saved; run the same "
              "command again to continue", flush=True)
        return 130
    summary = finish(run, kb, out, eval_fraction=job.eval_fraction, seed=job.seed, provider_name=engine.name,
                     settings=settings, judge=llm_judge(engine) if job.judge else None)
    print(f"[generate] {summary['counts']} (train / eval / audit), {summary['usage']['completion_tokens']} "
          f"completion tokens, {summary['seconds']} s; dataset and card in {out}", flush=True)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from trainer.kb.audit_report import AuditSettings
    from trainer.kb.audit import audit_file
    from trainer.kb.schema import KBError
    from trainer.kb.loader import SHIPPED_KB

    if args.kb is not None and not args.kb.strip():
        raise KBError("--kb '': no folder given; name the knowledge base folder, or use --no-kb to audit without it")
    judge = None
    if args.judge_base_url:
        from trainer.inference.endpoint import EndpointEngine
        from trainer.inference.model import BASE
        from trainer.jobs.synth import llm_judge

        endpoint = EndpointEngine(args.judge_base_url, {BASE: args.judge_model},
                                  api_key=os.environ.get(args.judge_api_key_env))
        judge = llm_judge(endpoint, max_tokens=args.judge_max_tokens)
    kb = None if args.no_kb else (args.kb or SHIPPED_KB)
    report = audit_file(args.file, kb, AuditSettings(near_duplicate=args.near_duplicate, judge_all=True),
                        args.out, against=args.against, judge=judge)
    print(report.markdown(args.file))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import json

    from trainer.kb.audit import Auditor
    from trainer.kb.loader import SHIPPED_KB, load_kb, resolve_kb_folder
    from trainer.kb.premise import check_rows, check_summary, check_table, read_questions

    rows = read_questions(args.file)
    checked = check_rows(rows, Auditor(load_kb(resolve_kb_folder(args.kb) if args.kb else SHIPPED_KB)))
    if args.json:
        for row in checked:
            print(json.dumps(row.to_dict(), ensure_ascii=False))
        print(json.dumps({"summary": check_summary(checked)}))
    else:
        print(check_table(checked))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trainer.jobs import EvalJob, load_eval_job

    job = load_eval_job(args.config, args.overrides, _typed_flags(args, EvalJob))
    # PyTorch's and bitsandbytes' OpenMP pools spin against each other on a small CPU: with idle threads sleeping,
    # 2-thread decoding measured ~3x faster (bench/eval_throughput.py). It must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from trainer.eval.run import run_evaluation

    run_evaluation(args.run, job)
    return 0


def cmd_export_feedback(args: argparse.Namespace) -> int:
    from trainer.hub.export import export_feedback

    export_feedback(args.store, args.out, system_prompt=not args.no_system_prompt)
    return 0


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "push": cmd_push, "serve": cmd_serve,
            "export-feedback": cmd_export_feedback, "plan": cmd_plan, "generate": cmd_generate, "audit": cmd_audit,
            "eval": cmd_eval, "check": cmd_check}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code. User errors print one clear line, not a traceback."""
    args = build_parser().parse_args(argv)
    from trainer.train.model import quiet_bitsandbytes_kernel_notice

    quiet_bitsandbytes_kernel_notice()  # before any command imports bitsandbytes (peft and trl do)
    from trainer import UserError

    try:
        return COMMANDS[args.command](args if args.command in SETTINGS_FILES else job_of(args))
    except UserError as exc:  # every error a user can fix derives from it: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
