"""`python -m trainer ...`: the command line. Heavy libraries load inside each command, so `--help` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, repeatable: --set stages.stage2.learning_rate=1e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Two-stage QLoRA fine-tuning of an open LLM into a study-abroad counsellor.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one stage or the whole pipeline")
    _add_config_args(train)
    train.add_argument("--stage", default="all", help="stage name from the config (stage1, stage2) or all")
    train.add_argument("--resume", action="store_true",
                       help="skip finished stages and continue an interrupted one from its last checkpoint")

    validate = sub.add_parser("validate", help="check a config and its data without training")
    _add_config_args(validate)

    push = sub.add_parser("push", help="publish a run's adapters, datasets and Space to the Hugging Face Hub")
    push.add_argument("--run", required=True, help="run directory, e.g. runs/demo")
    push.add_argument("--stage", action="append", help="stage(s) to push (default: every finished stage)")
    push.add_argument("--namespace", help="user or organisation (default: the token's user)")
    push.add_argument("--private", action="store_true", help="create the repos as private")
    push.add_argument("--revision", help="branch to push to (created if missing; default: main)")
    push.add_argument("--dry-run", action="store_true", help="write the exact folders and print the plan; no upload")
    push.add_argument("--out", help="where --dry-run (and the upload) stage the folders (default: <run>/push)")
    push.add_argument("--force", action="store_true", help="publish adapters that failed evaluation (the card says so)")
    push.add_argument("--no-datasets", action="store_true", help="do not export the training data")
    push.add_argument("--no-space", action="store_true", help="do not push the Space")
    push.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")

    export = sub.add_parser("export-feedback", help="turn the app's labelled feedback into stage-2 data")
    export.add_argument("--store", default="data/feedback/feedback.sqlite",
                        help="feedback SQLite file, or a folder of the JSONL records the Space pushed to the Hub")
    export.add_argument("--out", default="data/feedback/export", help="output folder (sft/kto/dpo JSONL + card)")
    export.add_argument("--no-system-prompt", action="store_true",
                        help="leave the system prompt out of the rows (needed for KTO/DPO with Mistral-Instruct)")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.train import run_pipeline

    cfg = load_config(args.config, args.overrides)
    stage_dirs = run_pipeline(cfg, args.stage, resume=args.resume)
    print("finished: " + ", ".join(str(d) for d in stage_dirs))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from trainer.config import build_lora_config, build_quantization_config, build_sft_config, load_config
    from trainer.data import DataError, prepare_stage_data, resolve_source
    from trainer.modeling import (ModelError, load_tokenizer, resolve_base_model, select_training_template,
                                  verify_training_template)
    from trainer.train import config_base_dir

    cfg = load_config(args.config, args.overrides)
    build_lora_config(cfg)
    build_quantization_config(cfg.quantization)
    for name in cfg.stages:
        build_sft_config(cfg, name, cfg.run_dir() / name / "checkpoints")
    print(f"config {cfg.source}: ok ({', '.join(cfg.stages)}; base {cfg.model.name}; "
          f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha}; max_length {cfg.max_length})")

    unchecked: list[str] = []
    tokenizer = template = None
    offline = bool(os.environ.get("HF_HUB_OFFLINE")) or not _hub_reachable()
    ref = resolve_base_model(cfg.model.name, cfg.model.revision)
    if ref.is_local or not offline:
        tokenizer = load_tokenizer(ref, cfg.model.trust_remote_code)
    else:
        # Offline, a Hub tokenizer can still be checked if it is in the local cache.
        try:
            tokenizer = load_tokenizer(ref, cfg.model.trust_remote_code, local_files_only=True)
        except ModelError:
            unchecked.append(f"chat template and token lengths: the tokenizer of {cfg.model.name} is not cached "
                             "and the Hub is not reachable")
    if tokenizer is not None:
        template = select_training_template(tokenizer, cfg.model.chat_template)
        checked = verify_training_template(tokenizer, template)
        print(f"chat template: {template.family} training template renders identically to the model's own "
              f"({checked} renderings compared)")

    failed = False
    for name, stage in cfg.stages.items():
        kind, _ = resolve_source(stage.dataset.path, config_base_dir(cfg))
        if kind == "hub" and offline:
            unchecked.append(f"stages.{name}.dataset {stage.dataset.path} (Hub dataset, offline)")
            continue
        try:
            data = prepare_stage_data(stage.dataset, seed=cfg.seed, max_length=cfg.max_length, tokenizer=tokenizer,
                                      chat_template=template.text if template else None,
                                      base_dir=config_base_dir(cfg))
        except DataError as exc:
            print(f"stage {name}: FAILED\n  {exc}", file=sys.stderr)
            failed = True
            continue
        if template is not None:
            verify_training_template(tokenizer, template, [c.messages for c in data.train[:64]])
        print(f"stage {name}: {data.summary()}")
        for report in data.reports:
            for error in report.errors[:20]:
                print(f"  skipped {error}")
    for item in unchecked:
        print(f"not checked: {item}")
    if failed:
        return 1
    print("valid" + (" (with the items above not checked)" if unchecked else ""))
    return 0


def _hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def cmd_push(args: argparse.Namespace) -> int:
    from trainer.hub import run_push

    plans = run_push(args.run, namespace=args.namespace, stages=args.stage, private=args.private,
                     revision=args.revision, dry_run=args.dry_run, out_dir=args.out, force=args.force,
                     datasets=not args.no_datasets, space=not args.no_space, endpoint=args.endpoint)
    if args.dry_run:
        print("dry run: nothing was uploaded; the folders above are exactly what would be")
        for plan in plans:
            print(f"\n{plan.repo_type} {plan.repo_id} ({plan.title}):")
            for path in plan.files():
                print(f"  {path.relative_to(plan.folder)}  ({path.stat().st_size:,} bytes)")
    return 0


def cmd_export_feedback(args: argparse.Namespace) -> int:
    from trainer.export import export_feedback

    export_feedback(args.store, args.out, system_prompt=not args.no_system_prompt)
    return 0


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "push": cmd_push, "export-feedback": cmd_export_feedback}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code. User errors print one clear line, not a traceback."""
    args = build_parser().parse_args(argv)
    from trainer.config import ConfigError
    from trainer.data import DataError
    from trainer.demo_model import DemoModelError
    from trainer.export import ExportError
    from trainer.hub import HubError
    from trainer.modeling import ModelError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, ModelError, DemoModelError, HubError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
