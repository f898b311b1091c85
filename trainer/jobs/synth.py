"""`python -m trainer generate`: grounded synthetic counselling dialogues for stage 1.

The paper's synthetic data went wrong in three ways; each has a counter here:

1. Impossible questions from a {programme} x {university} cross-product -> the prompt plan only combines what the
   knowledge base says exists (`build_plan`), plus a configured share of *deliberate* false-premise questions built
   from KB negatives, whose answers must correct the premise.
2. A generator without facts -> the KB facts relevant to each question go into the generator's prompt, with
   their official sources.
3. No fact checking -> every generated conversation goes through `trainer.kb.audit`; failures land in the `audit`
   split, never in `train`.

Engines (`trainer.inference.engine`): any OpenAI-compatible chat endpoint (`EndpointEngine`: Gemini's
OpenAI-compatible endpoint, Inference Providers, vLLM, TGI, `transformers serve`), or an in-process transformers model
(`LocalProvider`, default: the embedded demo model) so it runs offline. Generation is resumable: conversations are
appended to `raw.jsonl` when their group finishes, and a re-run skips plan ids already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from trainer import REPO_ROOT, UserError
from trainer.data.settings import TOPICS as _ALL_TOPICS
from trainer.inference.model import BASE, BatchAnswers, GenerationSettings
from trainer.inference.decode import TurnCache
from trainer.inference.engine import LocalEngine
from trainer.providers import JUDGE_MAX_TOKENS, Usage

TOPICS = tuple(t for t in _ALL_TOPICS if t != "other")
DEGREE_LEVELS = ("bachelor", "master", "phd")
BUDGETS = ("tight budget", "moderate budget", "comfortable budget")
BACKGROUNDS = ("fresh graduate", "working professional with three years' experience", "career changer",
               "first in the family to study abroad", "student with a scholarship in mind")


class GenerationError(UserError, RuntimeError):
    """Generation cannot go on; the message says why."""


@dataclass(frozen=True)
class PlanItem:
    """One conversation to generate: what it is about, who asks, and which KB facts ground it."""

    id: str
    topic: str
    persona: dict[str, str]
    destination: str
    question: str
    followups: tuple[str, ...]
    facts: tuple[dict[str, str], ...]
    false_premise: dict[str, str] | None = None
    """For deliberate false-premise questions: the false claim and the correction the answer must give."""
    exemplar: tuple[dict[str, str], ...] = ()
    """One exchange (question, answer) from a hand-written seed dialogue, shown to the generator as the style."""
    exemplar_id: str | None = None


def load_exemplars(path: str | Path) -> list[dict[str, Any]]:
    """Hand-written seed dialogues (`data/seed/stage1_grounded.jsonl`: id, topic, false_premise, messages)."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"{path}: few-shot exemplar file not found")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = [m for m in row["messages"] if m["role"] != "system"]
            assert messages[0]["role"] == "user" and messages[1]["role"] == "assistant"
        except (ValueError, KeyError, IndexError, TypeError, AssertionError):
            raise GenerationError(f"{path}:{number}: an exemplar needs `messages` starting with a user question "
                                  "and an assistant answer") from None
        rows.append({"id": str(row.get("id", f"{path.name}:{number}")), "topic": row.get("topic"),
                     "false_premise": bool(row.get("false_premise")), "messages": messages})
    return rows


def _pick_exemplar(exemplars: Sequence[dict[str, Any]], topic: str, false_premise: bool, rng: random.Random):
    """A seed dialogue of the same kind: a false-premise correction for a false premise, else the same topic."""
    if not exemplars:
        return (), None
    same = [e for e in exemplars if e["false_premise"]] if false_premise else \
        [e for e in exemplars if e["topic"] == topic and not e["false_premise"]]
    chosen = rng.choice(same or list(exemplars))
    return tuple({"role": m["role"], "content": m["content"]} for m in chosen["messages"][:2]), chosen["id"]


# The plan

def _persona(rng: random.Random, home) -> dict[str, str]:
    return {"home_country": home.name, "home_code": home.code, "degree_level": rng.choice(DEGREE_LEVELS),
            "budget": rng.choice(BUDGETS), "background": rng.choice(BACKGROUNDS)}


def _fact_dicts(facts) -> tuple[dict[str, str], ...]:
    return tuple({"text": f.text, "source": f.source, "as_of": f.as_of} for f in facts)


SHIPPED_FOLLOWUPS = REPO_ROOT / "data" / "seed" / "followups.yaml"


@dataclass(frozen=True)
class Followups:
    """The follow-up questions a conversation asks after its first: its topic's own, then general ones."""

    topics: dict[str, tuple[str, ...]]
    general: tuple[str, ...]

    def pick(self, topic: str, k: int, rng: random.Random) -> tuple[str, ...]:
        own = list(self.topics[topic])
        first = rng.sample(own, k=min(k, len(own)))
        return tuple(first + rng.sample(self.general, k=min(len(self.general), max(0, k - len(first)))))


def load_followups(path: str | Path = SHIPPED_FOLLOWUPS) -> Followups:
    """`data/seed/followups.yaml` or a file like it: `topics` (every generator topic, a list of questions each) and
    `general` (a list of questions); anything else is one error naming the file and the key."""
    from trainer.typed_yaml import read_yaml, suggest

    raw = read_yaml(path, what="follow-ups file", error=GenerationError)

    def questions(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(q, str) and q.strip() for q in value):
            raise GenerationError(f"{path}: {where}: expected a list of questions (text), got {value!r:.80}")
        return tuple(q.strip() for q in value)

    topics = raw.get("topics")
    if not isinstance(topics, dict):
        raise GenerationError(f"{path}: topics: expected a mapping of each topic to its questions")
    for name in topics:
        if name not in TOPICS:
            raise GenerationError(f"{path}: topics.{name}: not a topic of the generator{suggest(name, TOPICS)}; "
                                  f"the topics are {', '.join(TOPICS)}")
    missing = [t for t in TOPICS if t not in topics]
    if missing:
        raise GenerationError(f"{path}: topics: no follow-ups for {', '.join(missing)}")
    extra = sorted(set(raw) - {"topics", "general"})
    if extra:
        raise GenerationError(f"{path}: {extra[0]}: unknown key; the file holds `topics` and `general`")
    return Followups({t: questions(topics[t], f"topics.{t}") for t in TOPICS}, questions(raw.get("general"), "general"))


def _question(topic: str, rng: random.Random, kb, home, dest, persona) -> tuple[str, list, str] | None:
    """A question on `topic` for a student from `home` about `dest`, built only from what the KB says exists."""
    level = persona["degree_level"]
    universities = [u for u in kb.universities if u.country == dest.code and u.programmes]
    visa = dest.student_visa.name if getattr(dest, "student_visa", None) else "student visa"
    if topic in ("admissions", "sop"):
        if not universities:
            return None
        university = rng.choice(universities)
        programme = rng.choice(university.programmes)
        ask = (f"How do I apply for the {programme.degree} in {programme.field} at {university.name}?"
               if topic == "admissions" else
               f"How should I write my statement of purpose for the {programme.degree} in {programme.field} at "
               f"{university.name}?")
        return ask, [university], university.name
    if topic == "scholarships":
        options = [s for s in kb.scholarships if not getattr(s, "discontinued", False)
                   and kb.eligible(s.id, home.code) is True
                   and (s.host_country in (dest.code, None) or s.host_country == "any")]
        if not options:
            return None
        scholarship = rng.choice(options)
        return (f"I'm from {home.name}. Could the {scholarship.name} help me study for a {level}'s degree in "
                f"{dest.name}?", [scholarship], scholarship.name)
    if topic == "tests":
        tests = list(kb.tests)
        if not tests:
            return None
        test = rng.choice(tests)
        return f"Do I need the {test.name} to study for a {level}'s degree in {dest.name}?", [test], test.name
    templates = {
        "documents": f"Which documents do I need for a {visa} to study in {dest.name}?",
        "visas": f"How do I apply for a {visa} to study in {dest.name}?",
        "costs": f"How should I plan my budget for studying in {dest.name}? I'm on a {persona['budget']}.",
        "housing": f"How do I find safe student housing in {dest.name} before I arrive?",
        "health insurance": f"Do I need health insurance as an international student in {dest.name}?",
        "work rights": f"Can I work part-time while I study in {dest.name}?",
        "culture": f"What should I expect culturally when I move to {dest.name} to study?",
        "careers": f"Will a {level}'s degree from {dest.name} help my career back in {home.name}?",
        "language": f"Do I need to learn the local language to study in {dest.name}?",
    }
    return templates[topic], [], dest.name


def _false_premise(rng: random.Random, kb, home) -> tuple[str, dict[str, str], list, str] | None:
    """A question resting on something the KB says is false, and the correction its answer must give."""
    kinds = []
    negatives = [(u, n) for u in kb.universities for n in u.not_offered]
    if negatives:
        kinds.append("programme")
    ineligible = [s for s in kb.scholarships if kb.eligible(s.id, home.code) is False]
    if ineligible:
        kinds.append("scholarship")
    discontinued = [s for s in kb.scholarships if getattr(s, "discontinued", False)]
    if discontinued:
        kinds.append("discontinued")
    if kb.rules:
        kinds.append("rule")
    if not kinds:
        return None
    kind = rng.choice(kinds)
    if kind == "programme":
        university, negative = rng.choice(negatives)
        question = f"I want to apply for the {negative.degree} in {negative.field} at {university.name}. " \
                   "What are the entry requirements?"
        premise = {"kind": "programme_not_offered",
                   "claim": f"{university.name} offers a {negative.degree} in {negative.field}",
                   "correction": negative.correction, "source": negative.source}
        return question, premise, [university], university.country
    if kind == "scholarship":
        scholarship = rng.choice(ineligible)
        question = f"I'm a student from {home.name}. How do I apply for the {scholarship.name}?"
        premise = {"kind": "scholarship_ineligible",
                   "claim": f"students from {home.name} can apply for the {scholarship.name}",
                   "correction": f"Citizens of {home.name} are not eligible for the {scholarship.name}: "
                                 f"{scholarship.eligibility.text}", "source": scholarship.source}
        return question, premise, [scholarship], scholarship.host_country
    if kind == "discontinued":
        scholarship = rng.choice(discontinued)
        question = f"How do I apply for the {scholarship.name} this year?"
        premise = {"kind": "scholarship_discontinued", "claim": f"the {scholarship.name} is open",
                   "correction": f"The {scholarship.name} has been discontinued.", "source": scholarship.source}
        return question, premise, [scholarship], scholarship.host_country
    rule = rng.choice(list(kb.rules))
    country = kb.country(rule.country) if rule.country else None
    claim = rule.claim[0].lower() + rule.claim[1:] if rule.claim else rule.claim
    question = f"I've read that {claim.rstrip('.')}. Is that right?"
    premise = {"kind": "kb_contradiction", "claim": rule.claim, "correction": rule.fact, "source": rule.source}
    return question, premise, ([country] if country else []), rule.country


def build_plan(kb, n: int, *, seed: int = 3407, false_premise_share: float = 0.1,
               turns: tuple[int, int] = (8, 12), exemplars: Sequence[dict[str, Any]] = (),
               followups: Followups | None = None) -> list[PlanItem]:
    """`n` conversations: topics x personas x KB-valid combinations, `false_premise_share` of them deliberate
    false premises, each with a seed exemplar of its kind when `exemplars` are given and its follow-ups from
    `followups` (default: the shipped `data/seed/followups.yaml`). `turns` counts messages (8-12: 4-6 exchanges,
    like the StudyAbroadGPT data). Deterministic for a seed; plan ids are stable so generation can resume."""
    followups = followups or load_followups()
    rng = random.Random(seed)
    destinations = [c for c in kb.countries if getattr(c, "destination", False)]
    homes = [c for c in kb.countries if not getattr(c, "destination", False)] or list(kb.countries)
    if not destinations:
        raise GenerationError("the knowledge base has no destination countries")
    n_false = round(n * false_premise_share)
    false_slots = set(rng.sample(range(n), n_false)) if n_false else set()
    plan: list[PlanItem] = []
    seen: set[str] = set()
    attempts = 0
    while len(plan) < n and attempts < n * 50:
        attempts += 1
        home = rng.choice(homes)
        persona = _persona(rng, home)
        messages = rng.choice(range(turns[0], turns[1] + 1, 2))
        if len(plan) in false_slots:
            made = _false_premise(rng, kb, home)
            if made is None:
                continue
            question, premise, entities, country_code = made
            dest = kb.country(country_code) if country_code else rng.choice(destinations)
            topic = {"programme_not_offered": "admissions", "scholarship_ineligible": "scholarships",
                     "scholarship_discontinued": "scholarships"}.get(premise["kind"], "visas")
        else:
            dest = rng.choice(destinations)
            topic = TOPICS[len(plan) % len(TOPICS)]
            made = _question(topic, rng, kb, home, dest, persona)
            if made is None:
                continue
            question, entities, _ = made
            premise = None
        facts = kb.facts_for(countries=[dest] + [e for e in entities if hasattr(e, "commonwealth_member")],
                             universities=[e for e in entities if hasattr(e, "programmes")],
                             scholarships=[e for e in entities if hasattr(e, "eligibility")],
                             tests=[e for e in entities if hasattr(e, "score_range")])
        asked = followups.pick(topic, (messages - 2) // 2, rng)
        key = json.dumps([topic, persona, dest.code, question, asked, premise], sort_keys=True)
        plan_id = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16]
        if plan_id in seen:
            continue
        seen.add(plan_id)
        exemplar, exemplar_id = _pick_exemplar(exemplars, topic, premise is not None, random.Random(plan_id))
        plan.append(PlanItem(plan_id, topic, persona, dest.code, question, asked, _fact_dicts(facts), premise,
                             exemplar, exemplar_id))
    if len(plan) < n:
        raise GenerationError(f"the knowledge base supports only {len(plan)} distinct conversations, asked for {n}")
    return plan


SYSTEM_TEMPLATE = """You are a careful study-abroad counsellor. The student is from {home}, aiming for a {level}'s \
degree, with a {budget}; background: {background}.

Answer in English, in markdown: a short heading, then sections or bullet points, and end with concrete next steps. \
Use ONLY the verified facts below for anything specific (visa names, rules, eligibility, programmes); do not invent \
numbers, fees, deadlines, scholarship names or programmes that are not listed. When something changes yearly, say so \
and point to the official source. If the question assumes something untrue, say so politely first and explain what \
is true.

Verified facts (with official sources):
{facts}"""


def system_prompt(item: PlanItem) -> str:
    facts = "\n".join(f"- {f['text']} (source: {f['source']}, as of {f['as_of']})" for f in item.facts) or "- (none)"
    text = SYSTEM_TEMPLATE.format(home=item.persona["home_country"], level=item.persona["degree_level"],
                                  budget=item.persona["budget"], background=item.persona["background"], facts=facts)
    if item.false_premise:
        claim = item.false_premise["claim"].rstrip(".")
        text += (f"\n\nThe student's first question rests on a false premise: {claim}. "
                 f"Correct it politely at the start of your answer: {item.false_premise['correction']}")
    if item.exemplar:
        question, answer = (m["content"] for m in item.exemplar)
        text += ("\n\nAn example of the expected style (a different student; do not copy its facts):\n"
                 f"Student: {question}\nCounsellor:\n{answer}")
    return text


class LocalProvider(LocalEngine):
    """An in-process transformers model (default: the embedded demo model), for offline generation: loaded through
    `trainer.inference.model` (revision, device) unquantized, answering through the one engine interface
    (`LocalEngine.answer_all`, turn by turn with the conversations' KV cache kept)."""

    kind = "local"
    DECODING = GenerationSettings(max_new_tokens=400, temperature=0.7, top_p=0.95, repetition_penalty=1.1)
    """How it decodes unless told otherwise; `complete` keeps all but the length and temperature."""

    def __init__(self, model: str = "smollm2-135m-instruct", threads: int | None = None, revision: str | None = None):
        import torch

        from trainer.train.config import QuantizationSettings
        from trainer.inference.model import load_adapter_model
        from trainer.train.model import resolve_base_model

        self.model_name = model
        # Unquantized, as the local generator has always run: fp32 on a CPU (bf16 on a GPU, where it now goes).
        super().__init__(load_adapter_model(resolve_base_model(model, revision),
                                            QuantizationSettings(load_in_4bit=False)))
        self._lock = threading.Lock()
        if threads:
            torch.set_num_threads(threads)

    @property
    def name(self) -> str:
        return f"local transformers ({self.model_name})"

    def answer_all(self, conversations: Sequence[Sequence[dict[str, str]]], adapter: str = BASE,
                   settings: GenerationSettings = DECODING, *, progress=None, cache: TurnCache | None = None,
                   keys: Sequence[Any] | None = None) -> BatchAnswers:
        """Every conversation's next answer in one batch: the generator groups its batches itself. With a `cache`
        (and each row's conversation in `keys`), the conversations' earlier turns are not computed again: pass the
        same cache for every turn of a group."""
        with self._lock:
            self.batch_size = max(1, len(conversations))
            return super().answer_all(conversations, adapter, settings, progress=progress, cache=cache, keys=keys)


# Generating

@dataclass(frozen=True)
class SynthSettings:
    """How a generation run goes: its decoding, how many conversations at once, and the prices for the estimate."""

    decoding: GenerationSettings = LocalProvider.DECODING
    """An OpenAI-compatible endpoint receives its length and temperature; the local model all of it."""
    concurrency: int = 4
    """Answers in flight: parallel requests to an endpoint, or the local model's batch size."""
    price_in_per_m: float = 0.0
    """Price per million prompt tokens, for the cost estimate."""
    price_out_per_m: float = 0.0


@dataclass
class GenerationRun:
    rows: list[dict[str, Any]]
    usage: Usage
    skipped: int
    seconds: float
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def read_done(raw: Path) -> dict[str, dict[str, Any]]:
    """Rows already in the append-only output, by plan id (a torn last line from a crash is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if raw.is_file():
        for line in raw.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            done.setdefault(row["plan_id"], row)
    return done


def generate(plan: Sequence[PlanItem], engine, raw: Path, settings: SynthSettings = SynthSettings(),
             kb_version: dict[str, str] | None = None, progress: bool = True) -> GenerationRun:
    """Generate every plan item not yet in `raw` (append-only JSONL) and return all rows, old and new. `engine` is
    any engine (`trainer.inference.engine`): the local model (`LocalProvider`) or an endpoint (`EndpointEngine`)."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(raw)
    todo = [item for item in plan if item.id not in done]
    usage = Usage()
    started = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="generating", unit="conv")

    def write(row: dict[str, Any]) -> None:
        with open(raw, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")  # one write per row: never a half row
            fh.flush()
            os.fsync(fh.fileno())
            done[row["plan_id"]] = row
            if bar is not None:
                bar.update(1)

    def row_for(item: PlanItem, messages: list[dict[str, str]], item_usage: Usage) -> dict[str, Any]:
        return {"plan_id": item.id, "messages": messages, "topic": item.topic, "persona": item.persona,
                "destination": item.destination, "false_premise": item.false_premise,
                "provenance": {"provider": getattr(engine, "kind", "custom"), "model": engine.name,
                               "kb_version": kb_version, "kb_facts": list(item.facts),
                               "exemplar": item.exemplar_id},
                "usage": asdict(item_usage)}

    interrupted = False
    try:
        _generate_turns(todo, engine, settings, usage, write, row_for)
    except KeyboardInterrupt:
        interrupted = True  # everything written so far stays; a re-run continues from there
    finally:
        if bar is not None:
            bar.close()
    rows = [done[item.id] for item in plan if item.id in done]
    return GenerationRun(rows, usage, len(plan) - len(todo), time.time() - started, interrupted)


def _conversation_turns(item: PlanItem) -> list[str]:
    return [item.question, *item.followups]


ENDPOINT_WAVES = 4
"""An endpoint's group is this many waves of `concurrency` requests: within a turn a request that finishes early
frees its slot for the next conversation, so a slow answer holds up only the end of a turn, not every wave."""


def _generate_turns(todo, engine, settings: SynthSettings, usage: Usage, write, row_for) -> None:
    """Answer a group of conversations turn by turn through the engine (`answer_all`: each turn's answers of the
    whole group at once), and write each conversation when its group is done. Conversations with as many turns and
    similar prompt lengths go together, so a group neither shrinks halfway nor pads much. The local model answers a
    group as one batch and keeps the group's KV cache from turn to turn (`TurnCache`), so a turn computes only the
    new answer and question rather than the whole grounded prompt again; an endpoint's group is `ENDPOINT_WAVES`
    waves of requests in flight."""
    local = isinstance(engine, LocalEngine)
    size = max(1, settings.concurrency) * (1 if local else ENDPOINT_WAVES)
    # each conversation's system message and questions, built once
    todo = sorted(((item, {"role": "system", "content": system_prompt(item)}, _conversation_turns(item))
                   for item in todo), key=lambda entry: (-len(entry[2]), len(entry[1]["content"])))
    for start in range(0, len(todo), size):
        items, systems, questions = zip(*todo[start:start + size])
        talks: list[list[dict[str, str]]] = [[] for _ in items]
        used = [Usage() for _ in items]
        cache = TurnCache() if local else None
        for turn in range(max(map(len, questions))):
            active = [k for k, asked in enumerate(questions) if turn < len(asked)]
            for k in active:
                talks[k].append({"role": "user", "content": questions[k][turn]})
            prompts = [[systems[k], *talks[k]] for k in active]
            reuse = {"cache": cache, "keys": active} if local else {}
            answers = engine.answer_all(prompts, BASE, settings.decoding, **reuse)
            for j, k in enumerate(active):
                text = answers.texts[j] if local else answers.texts[j].strip()  # as cached / as the server sent it
                talks[k].append({"role": "assistant", "content": text})
                used[k].add(answers.usage(j))
        for item, messages, item_usage in zip(items, talks, used):
            usage.add(item_usage)
            write(row_for(item, messages, item_usage))


# Output: audit, split, save, card

def finish(run: GenerationRun, kb, out: Path, *, eval_fraction: float = 0.1, seed: int = 3407,
           provider_name: str, settings: SynthSettings, judge=None) -> dict[str, Any]:
    """Audit every row, split train / eval / audit, save a DatasetDict and JSONL, write the card."""
    import datasets

    from trainer.kb.audit_report import AuditSettings
    from trainer.kb.audit import Auditor, split_by_audit
    from trainer.data.conversations import Conversation, split_train_eval

    report = Auditor(kb, AuditSettings(min_messages=4, max_messages=12, unknown_scholarship="fail"), judge) \
        .audit([r["messages"] for r in run.rows])
    for row, audit in zip(run.rows, report.rows):
        row["flags"] = [str(f) for f in audit.flags]
    passed, failed = split_by_audit(run.rows, report)
    convs = [Conversation(tuple(r["messages"]), r["plan_id"]) for r in passed]
    train_c, eval_c = split_train_eval(convs, eval_fraction, seed)
    by_id = {r["plan_id"]: r for r in passed}
    splits = {"train": [by_id[c.location] for c in train_c], "eval": [by_id[c.location] for c in eval_c],
              "audit": failed}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(_export_row(r), ensure_ascii=False) + "\n"
                                                   for r in rows), encoding="utf-8")
    # Explicit features and one shard per split: an empty split (all rows failed, or none did) still saves a
    # file with the full schema, so `load_from_disk` reads every split back.
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "plan_id": datasets.Value("string"), "topic": datasets.Value("string"),
        "false_premise": datasets.Value("string"), "provenance": datasets.Value("string"),
        "flags": datasets.List(datasets.Value("string"))})
    dataset = datasets.DatasetDict({
        name: datasets.Dataset.from_list([_flat(r) for r in rows], features=features) if rows else
        datasets.Dataset.from_dict({key: [] for key in features}, features=features)
        for name, rows in splits.items()})
    dataset.save_to_disk(str(out / "dataset"), num_shards={name: 1 for name in splits})
    (out / "audit.md").write_text(report.markdown(str(out / "raw.jsonl")), encoding="utf-8")
    cost = (run.usage.prompt_tokens * settings.price_in_per_m + run.usage.completion_tokens *
            settings.price_out_per_m) / 1e6
    summary = {"provider": provider_name, "kb_version": kb.version, "counts": {k: len(v) for k, v in splits.items()},
               "false_premise": sum(1 for r in run.rows if r.get("false_premise")), "audit": report.summary(),
               "usage": asdict(run.usage), "cost_estimate": round(cost, 4), "seconds": round(run.seconds, 1),
               "resumed_rows": run.skipped, "interrupted": run.interrupted}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    from trainer.hub.cards import synthetic_card

    synthetic_card(summary, asdict(settings)).save(out / "README.md")
    return summary


def _export_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("messages", "plan_id", "topic", "destination", "false_premise", "provenance", "flags")
            if k in row}


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": row["messages"], "plan_id": row["plan_id"], "topic": row["topic"],
            "false_premise": json.dumps(row.get("false_premise")), "provenance": json.dumps(row["provenance"]),
            "flags": row.get("flags", [])}


JUDGE_PROMPT = """You check counselling answers against verified facts. Facts:
{facts}

Conversation:
{conversation}

Does any assistant answer contradict the facts, or state a specific visa rule, eligibility, programme or \
scholarship that the facts do not support?
Reply with one line of JSON: {{"verdict": "ok" or "error", "reason": "..."}}"""


def llm_judge(engine, max_tokens: int = JUDGE_MAX_TOKENS) -> Callable[[list[dict[str, str]], list[Any]],
                                                                      tuple[bool | None, str]]:
    """An audit judge that asks an engine (the generator's, or an endpoint of its own) greedily: (True, reason) for
    "ok", (False, reason) for "error", and (None, what it said) for a reply without a verdict, which flags nothing."""
    greedy = GenerationSettings(max_new_tokens=max_tokens, temperature=0.0)

    def judge(messages, facts) -> tuple[bool | None, str]:
        prompt = JUDGE_PROMPT.format(facts="\n".join(f"- {f.text}" for f in facts) or "- (none)",
                                     conversation="\n".join(f"{m['role']}: {m['content']}" for m in messages))
        reply = engine.generate([{"role": "user", "content": prompt}], BASE, greedy)
        start, end = reply.find("{"), reply.rfind("}")
        try:
            verdict = json.loads(reply[start:end + 1])
        except (ValueError, json.JSONDecodeError):
            verdict = None
        if not isinstance(verdict, dict) or verdict.get("verdict") not in ("ok", "error"):
            return None, f"judge reply held no verdict: {reply.strip()[:120]!r}"
        return verdict["verdict"] == "ok", str(verdict.get("reason", ""))
    return judge
