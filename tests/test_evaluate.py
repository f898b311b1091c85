"""`python -m trainer eval`: the metrics on answers with known scores, the rubric file, the bootstrap, the gate, the
blind judge against a real OpenAI-compatible server (`transformers serve`), and the whole evaluation of a trained
demo run followed by `push --dry-run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from trainer.__main__ import main
from trainer.eval import EvalError
from trainer.eval.gate import gate_decision
from trainer.train.rundir import verdict_of
from trainer.eval.judge import (JudgeSettings, PairwiseJudge, combine_orders, judge_pairs, parse_verdict,
                                summarize_judgements)
from trainer.eval.rubric import (DEFAULT_QUESTIONS, PASS_THRESHOLD, RUBRIC_TOPICS, is_markdown, load_questions,
                                 parse_question, score_answer, select_questions)
from trainer.eval.items import answer_items, measure
from trainer.eval.metrics import judge_comparison, model_metrics
from trainer.eval.report import render_report
from trainer.eval.results import EvalResults
from trainer.eval.stats import bleu_from_statistics, bleu_statistics, bootstrap_ci, rouge_l
from trainer.jobs import EvalJob

QUESTION = {
    "id": "work-canada", "topic": "work rights", "false_premise": True, "source": "https://www.canada.ca/",
    "question": "My Canadian study permit lets me work unlimited hours off campus during the semester, right?",
    "correction": ["24 hours", "(?:not|n't) unlimited"],
    "must_mention": [["scheduled breaks?", "holidays?"], "off-campus work permit|eligible"],
    "must_not_claim": [{"claim": "can work unlimited hours (?:during|in) the semester",
                        "unless": "temporary|ended"}],
}
ORDINARY = {
    "id": "docs-uk", "topic": "documents", "false_premise": False, "source": "https://www.gov.uk/student-visa",
    "question": "Which documents do I need for a UK Student visa?",
    "must_mention": [["\\bCAS\\b", "confirmation of acceptance"], "passport", "bank statement|proof of funds"],
    "must_not_claim": ["(?:need|submit) (?:an? )?I-20"],
}


def question(raw=QUESTION):
    return parse_question(raw, "questions.yaml", 0)


# Metrics on hand-made answers

def test_markdown_rate_counts_headings_or_two_list_items():
    answers = ["## Documents\nBring your passport.",           # heading
               "You need:\n- a passport\n- a CAS",                # two bullets
               "Steps:\n1. Apply\n2) Pay the fee",                  # numbered items
               "Only one item:\n- a passport",                      # one bullet is not a list
               "#hashtag and **bold** are not structure",           # no space after #, bold only
               "Plain paragraph, no structure at all."]
    assert [is_markdown(a) for a in answers] == [True, True, True, False, False, False]


def test_rubric_scoring_pass_missing_mentions_false_claims_and_unless():
    q = question()
    good = score_answer(q, "No: since November 2024 the limit is 24 hours a week off campus, and full-time "
                           "during scheduled breaks.")
    assert good.points == (True, True, False) and good.score == round(2 / 3, 4) and good.passed and good.corrected

    thin = score_answer(q, "You should check with IRCC.")
    assert thin.score == 0 and not thin.passed and thin.corrected is False

    wrong = score_answer(q, "Yes, you can work unlimited hours during the semester, plus full-time in holidays.")
    assert wrong.claims and wrong.score == 0 and not wrong.passed and wrong.corrected is False

    saved = score_answer(q, "You can work unlimited hours during the semester only under the temporary policy, "
                            "which ended; now it is 24 hours, full-time in scheduled breaks.")
    assert not saved.claims and saved.passed and saved.corrected

    curly = score_answer(q, "It isn’t unlimited, and you can work full-time during holidays if eligible.")
    assert curly.score == 1.0 and curly.corrected  # a typographic apostrophe matches n't

    docs = question(ORDINARY)
    half = score_answer(docs, "Bring your passport and your CAS.")
    assert half.score == round(2 / 3, 4) and half.passed and half.corrected is None
    assert PASS_THRESHOLD == 0.5
    assert not score_answer(docs, "Bring your passport.").passed  # 1/3 < 0.5
    assert score_answer(docs, "Passport, CAS, bank statement, and you must submit an I-20.").score == 0


def test_false_premise_correction_rate_needs_a_cue_and_no_false_claim():
    fp, ordinary = question(), question(ORDINARY)
    questions = [fp, ordinary, fp, fp]
    answers = ["It is capped at 24 hours a week, full-time in scheduled breaks.",  # corrected
               "Passport, CAS and a bank statement.",                                # not a false-premise question
               "24 hours? No, you can work unlimited hours during the semester.",  # cue, but the claim fires
               "Talk to your international office."]                                 # no cue
    measures, _, _ = measure(answer_items(questions, [], [], ""), answers, NoKBFlags())
    assert measures.corrected == [1.0, None, 0.0, 0.0]  # only false-premise questions count
    metrics, _ = model_metrics(measures)
    assert metrics["false_premise_correction"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["rubric_accuracy"] == pytest.approx(2 / 4)
    only_ordinary, _, _ = measure(answer_items([ordinary], [], [], ""), ["x"], NoKBFlags())
    assert "false_premise_correction" not in model_metrics(only_ordinary)[0]


class NoKBFlags:
    """An auditor whose live answer check flags nothing: the rubric's measures alone."""

    def check_answer(self, messages):
        return []


def test_limit_keeps_both_kinds_of_question():
    questions = load_questions(DEFAULT_QUESTIONS)
    picked = select_questions(questions, 4)
    assert len(picked) == 4 and sum(q.false_premise for q in picked) == 2
    assert select_questions(questions, None) == questions


def test_reference_metrics_are_the_libraries_own():
    assert rouge_l(["the visa takes three weeks"], ["the visa takes three weeks"]) == [1.0]
    same = bleu_statistics(["you need a CAS and a passport"], ["you need a CAS and a passport"])
    assert bleu_from_statistics(same) == pytest.approx(100.0)
    from sacrebleu.metrics import BLEU

    hyps = ["you need a CAS and a passport", "apply three months early", "the fee is paid online"]
    refs = ["you need a CAS, a passport and money", "apply early", "pay the fee online before the interview"]
    assert bleu_from_statistics(bleu_statistics(hyps, refs)) == pytest.approx(
        BLEU().corpus_score(hyps, [refs]).score)


# The bootstrap

def test_bootstrap_interval_arithmetic_and_seeding():
    assert bootstrap_ci([1.0] * 30) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 30) == (0.0, 0.0)
    assert bootstrap_ci([]) is None
    half = [1.0] * 100 + [0.0] * 100
    low, high = bootstrap_ci(half, seed=1)
    assert 0.42 < low < 0.47 and 0.53 < high < 0.58  # normal approximation: 0.5 +- 1.96 * 0.0354
    assert bootstrap_ci(half, seed=1) == (low, high)  # same seed, same interval
    assert bootstrap_ci(half, seed=2) != (low, high)
    ratio = bootstrap_ci([[2.0, 1.0], [4.0, 2.0], [6.0, 3.0]], lambda rows: rows[:, 0].sum() / rows[:, 1].sum())
    assert ratio == (2.0, 2.0)  # every conversation has loss 2 per token


def test_judgements_combine_both_orders():
    assert combine_orders("adapter", "adapter") == "adapter"
    assert combine_orders("adapter", "tie") == "adapter"
    assert combine_orders("tie", "base") == "base"
    assert combine_orders("adapter", "base") == "tie"  # position bias: no preference survives the swap
    assert combine_orders(None, "base") == "base"
    assert combine_orders(None, None) is None
    s = summarize_judgements(["adapter"] * 6 + ["tie"] * 2 + ["base"] * 2 + [None])
    assert (s["n"], s["wins"], s["ties"], s["losses"], s["invalid"]) == (10, 6, 2, 2, 1)
    assert s["win_rate"] == 0.6 and s["net"] == pytest.approx(0.4)
    assert s["net_ci"][0] <= 0.4 <= s["net_ci"][1]
    all_wins = summarize_judgements(["adapter"] * 8)
    assert all_wins["win_rate_ci"] == (1.0, 1.0) and all_wins["net_ci"] == (1.0, 1.0)


@pytest.mark.parametrize("reply, verdict", [
    ("Verdict: A", "A"), ("verdict: b\nB is more accurate.", "B"), ("Verdict: tie", "tie"),
    ("**Verdict:** [[B]]", "B"), ("[[A]]", "A"), ("B", "B"), ("A.\nIt corrects the premise.", "A"),
    ("Answer B is better because it cites the source.", "B"), ("It's a tie.", "tie"),
    ("Both answers are equally good.", "tie"), ("Verdict: A ... on reflection, Verdict: B", "B"),
    ("A good answer would mention the CAS.", None), ("I cannot decide.", None), ("", None),
])
def test_verdict_parsing(reply, verdict):
    assert parse_verdict(reply) == verdict


# The gate

def judge_summary(wins, ties, losses, agreement=1.0):
    outcomes = ["adapter"] * wins + ["tie"] * ties + ["base"] * losses
    return summarize_judgements(outcomes) | {
        "agreement": agreement, "reliable": agreement >= 2 / 3,
        "outcomes": [{"adapter": 1, "base": -1, "tie": 0}[o] for o in outcomes],
        "per_question": [{"id": f"q{i}"} for i in range(len(outcomes))]}


def test_a_judge_that_prefers_the_base_fails_the_gate_and_an_unreliable_one_is_not_used():
    lost = judge_comparison(judge_summary(1, 3, 16), margin=0.05)
    gate = gate_decision({"judge": lost})
    assert gate["verdict"] == "failed" and gate["checks"]["judge"] == "failed"
    close = gate_decision({"judge": judge_comparison(judge_summary(5, 4, 7), margin=0.05)})
    assert close["verdict"] == "inconclusive" and "judge (adapter wins - base wins) -0.12" in close["summary"]
    assert judge_comparison(judge_summary(1, 3, 16, agreement=0.6), margin=0.05) is None
    # only the kept (uncontaminated) questions count
    kept = judge_comparison(judge_summary(3, 0, 17), {"q0", "q1", "q2"}, margin=0.05)
    assert (kept["n"], kept["adapter_only"], kept["base_only"]) == (3, 3, 0)


# The rubric file

def kb_ids() -> set[str]:
    ids = set()
    for path in (REPO / "data" / "kb").glob("*.yaml"):
        for section in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).values():
            for entry in section if isinstance(section, list) else []:
                ids.update(str(entry[k]) for k in ("id", "code") if isinstance(entry, dict) and k in entry)
    return ids


def test_shipped_questions_cover_the_taxonomy_and_validate():
    questions = load_questions(DEFAULT_QUESTIONS)  # every regex compiles, every rule is well formed
    assert len(questions) >= 80
    assert sum(q.false_premise for q in questions) >= 20
    assert {q.topic for q in questions} == set(RUBRIC_TOPICS)
    assert all(q.source.startswith("https://") for q in questions)
    assert all(q.correction and q.must_not_claim for q in questions if q.false_premise)
    for q in questions:  # an answer that only repeats the question must not pass
        echo = score_answer(q, q.question)
        assert not echo.passed and not echo.corrected, q.id
    known = kb_ids()
    if known:
        missing = [(q.id, ref) for q in questions for ref in q.kb if ref not in known]
        assert not missing, f"kb references not in data/kb: {missing}"


@pytest.mark.parametrize("change, rule", [
    (lambda q: q.pop("source"), "questions[0] (work-canada).source: required key is missing"),
    (lambda q: q.update(source="see the website"), "questions[0] (work-canada).source: must be an http(s) URL"),
    (lambda q: q.update(topic="visa"), "questions[0] (work-canada).topic: 'visa' is not one of"),
    (lambda q: q.update(false_premise="perhaps"),
     "questions[0] (work-canada).false_premise: expected true or false, got 'perhaps'"),
    (lambda q: q.update(must_mention=["(unclosed"]), "questions[0] (work-canada).must_mention[0]: regex '(unclosed' "
                                                     "does not compile"),
    (lambda q: q.update(must_mention=["x|"]), ".must_mention[0]: regex 'x|' matches the empty string"),
    (lambda q: q.update(must_mention=["unlimited"]), ".must_mention[0]: the question itself satisfies this point"),
    (lambda q: q.pop("correction"), "questions[0] (work-canada).correction: a false-premise question needs"),
    (lambda q: q.update(must_not_claim=[{"claim": "x", "unles": "y"}]),
     ".must_not_claim[0].unles: unknown key (did you mean 'unless'?)"),
    (lambda q: q.update(must_not_claim=[3]), ".must_not_claim[0]: expected a regex or a mapping"),
    (lambda q: q.update(sorce="x"), "questions[0] (work-canada).sorce: unknown key (did you mean 'source'?)"),
    (lambda q: q.update(id="Work Canada"), "questions[0] (Work Canada).id: must be"),
    (lambda q: q.pop("id"), "questions[0].id: required key is missing"),
])
def test_bad_questions_fail_with_file_id_and_rule(tmp_path, change, rule):
    broken = json.loads(json.dumps(QUESTION))
    change(broken)
    path = tmp_path / "questions.yaml"
    path.write_text(yaml.safe_dump({"questions": [broken]}), encoding="utf-8")
    with pytest.raises(EvalError) as err:
        load_questions(path)
    assert str(err.value).startswith(f"{path}: ") and rule in str(err.value)


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    path = tmp_path / "questions.yaml"
    path.write_text(yaml.safe_dump({"questions": [QUESTION, QUESTION]}), encoding="utf-8")
    with pytest.raises(EvalError, match=r"questions\[1\] \(work-canada\)\.id: 'work-canada' is used twice "
                                        r"\(first at questions\[0\]\)$"):
        load_questions(path)
    path.write_text("questions: []\n", encoding="utf-8")
    with pytest.raises(EvalError, match="questions: expected a non-empty list of questions"):
        load_questions(path)
    path.write_text("question: []\n", encoding="utf-8")
    with pytest.raises(EvalError, match=r"question: unknown key \(did you mean 'questions'\?\)$"):
        load_questions(path)
    with pytest.raises(EvalError, match="questions file not found"):
        load_questions(tmp_path / "absent.yaml")


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run directory"
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--run", str(tmp_path / "empty")]) == 2
    assert "no adapters to evaluate" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"questions": [{**QUESTION, "must_mention": ["(oops"]}]}), encoding="utf-8")
    assert main(["eval", "--run", str(tmp_path / "empty"), "--questions", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}: questions[0] (work-canada).must_mention[0]")


# The run as the evaluation reads it (no model: the plan is made before any weights load)

def test_the_plan_holds_each_stages_held_out_rows_and_names_the_ones_it_cannot_reread(tmp_path):
    from run_folder import data_files, write_stage

    from trainer.data.conversations import content_hash
    from trainer.eval.run import plan_evaluation

    train, test = data_files(tmp_path / "data")
    write_stage(tmp_path, f"stages.stage1.dataset.path={train}", "stages.stage1.dataset.eval_fraction=0.25")
    write_stage(tmp_path, f"stages.stage2.dataset.path={train}", f"stages.stage2.dataset.eval_path={test}",
                stage="stage2")
    run_dir = tmp_path / "runs" / "demo"
    plan = plan_evaluation(run_dir, EvalJob(limit=2))
    assert [s.name for s in plan.stages] == ["stage1", "stage2"] and plan.split_problems == {}
    for stage in plan.stages:
        listed = [r["sha256"] for r in json.loads((stage.dir / "split.json").read_text())["eval"]]
        assert [c.content_hash for c in plan.eval_rows[stage.name]] == listed
    assert [c.content_hash for c in plan.eval_rows["stage2"]] == \
        [content_hash(json.loads(line)["messages"]) for line in test.read_text().splitlines()]
    assert len(plan.held_out) == 2 + 3  # stage 1's held-out quarter of the training file, and the eval file

    test.write_text(test.read_text() + "\n")  # the rubric and the judge still run; the held-out loss cannot
    plan = plan_evaluation(run_dir, EvalJob(limit=2))
    assert plan.eval_rows["stage2"] == [] and list(plan.split_problems) == ["stage2"]
    assert plan.split_problems["stage2"].startswith(f"{test}: changed since stage2 was trained")
    assert len(plan.held_out) == 2


# The judge against a real OpenAI-compatible server

def test_judge_against_transformers_serve(transformers_serve, monkeypatch):
    url, model = transformers_serve
    monkeypatch.setenv("EVAL_TEST_JUDGE_KEY", "sk-test-secret-key-000")
    judge = PairwiseJudge(JudgeSettings(base_url=url, model=model, api_key_env="EVAL_TEST_JUDGE_KEY",
                                        max_tokens=6, concurrency=2))
    items = [("q1", "How many hours can I work on a UK Student visa in term?", "Up to 20 hours a week.",
              "As many as you like."),
             ("q2", "Is health insurance compulsory in Germany?", "Yes, you need it to enrol.", "No."),
             ("q3", "Does Caltech have a law school?", "Yes, a famous one.", "No, Caltech has no law school.")]
    result = judge_pairs(judge, items, seed=7)
    assert result["judgements"] == 6 and sum(result["verdict_letters"].values()) == 6
    assert result["n"] + result["invalid"] == 3
    assert result["wins"] + result["ties"] + result["losses"] == result["n"]
    for record in result["per_question"]:
        for order in ("base_first", "adapter_first"):
            entry = record[order]
            assert entry["verdict"] == parse_verdict(entry["reply"])
            assert entry["preferred"] in ("adapter", "base", "tie", None)
        assert record["outcome"] == combine_orders(record["base_first"]["preferred"],
                                                   record["adapter_first"]["preferred"])
    assert "sk-test-secret-key-000" not in json.dumps(result) + json.dumps(judge.settings.describe())


# The whole evaluation of a trained demo run, then the model card

@pytest.fixture
def run_copy(short_demo_run, tmp_path) -> Path:
    dest = tmp_path / "runs" / short_demo_run.name
    shutil.copytree(short_demo_run, dest, ignore=shutil.ignore_patterns("push", "eval"))
    return dest


def test_eval_of_the_demo_run_side_by_side_with_a_verdict_per_adapter(run_copy, transformers_serve, capsys,
                                                                       monkeypatch):
    from huggingface_hub import ModelCard

    from trainer.data.conversations import file_sha256
    from trainer.train.lineage import write_json

    url, model = transformers_serve
    monkeypatch.setenv("EVAL_TEST_JUDGE_KEY", "sk-test-secret-key-000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what `eval` sets; undone after the test
    # one thread: on a shared 2-core machine, two OpenMP threads mostly wait for each other in decoding
    assert main(["eval", "--run", str(run_copy), "--limit", "4", "--max-new-tokens", "12", "--threads", "1",
                 "--judge-base-url", url, "--judge-model", model, "--judge-api-key-env", "EVAL_TEST_JUDGE_KEY",
                 "--judge-max-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "[eval] stage1: " in printed and "[eval] report: " in printed

    out = run_copy / "eval"
    for name in ("report.md", "results.json", "answers.jsonl", "metrics.png", "loss_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["gate"]) == set(results["adapters"]) == {"stage1", "stage2"}
    for stage, gate in results["gate"].items():
        assert gate["verdict"] in ("passed", "failed", "inconclusive") and "rubric accuracy" in gate["summary"]
        assert gate["passed"] == {"passed": True, "failed": False}.get(gate["verdict"])
        assert (gate["verdict"] == "failed") == bool(gate["failed"])
        paired = results["adapters"][stage]["paired"]
        assert paired["rubric_accuracy"]["n"] == 4 and "p_value" in paired["rubric_accuracy"]
        assert paired["eval_loss"]["method"].startswith("paired percentile bootstrap")
        # the judge gates only when its two orders agree often enough to be trusted
        assert ("judge" in paired) == results["judge"]["per_adapter"][stage]["reliable"]
    assert results["contamination"]["checked"] and results["contamination"]["matches"] == []
    assert results["settings"]["gate"]["margin"] == 0.05
    for entry in [results["base"], *results["adapters"].values()]:
        metrics = entry["metrics"]
        for key in ("eval_loss", "eval_perplexity", "rouge_l", "bleu", "markdown_rate", "rubric_accuracy",
                    "false_premise_correction"):
            assert isinstance(metrics[key], float), key
        assert entry["intervals"]["rubric_accuracy"][0] <= metrics["rubric_accuracy"] <= \
            entry["intervals"]["rubric_accuracy"][1]
        assert len(entry["chat_template_sha256"]) == 64
        assert entry["throughput"]["samples"] == 4 + results["n"]["reference_prompts"]
    assert results["n"]["questions"] == 4 and results["n"]["false_premise_questions"] == 2
    # results.json and answers.jsonl are both complete: no internal field left in one, every count in the other
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    for name, entry in [("base", results["base"]), *results["adapters"].items()]:
        assert not [key for key in entry if key.startswith("_")], name
        mine = [row for row in answers if row["model"] == name]
        assert len(mine) == results["n"]["answers_per_model"]
        assert sum(row["new_tokens"] for row in mine) == entry["throughput"]["new_tokens"]
    held_out = {r["sha256"] for s in ("stage1", "stage2")
                for r in json.loads((run_copy / s / "split.json").read_text())["eval"]}
    assert results["n"]["eval_conversations"] == len(held_out)
    assert results["n"]["reference_prompts"] == min(4, results["n"]["reference_prompts"]) >= len(held_out)
    assert results["settings"]["generation"]["max_new_tokens"] == 12
    for stage in ("stage1", "stage2"):  # the adapter's own loss on its own split, close to what training logged
        measured = results["adapters"][stage]["eval_loss_by_split"][stage]["loss"]
        recorded = json.loads((run_copy / stage / "metrics.json").read_text())["eval_loss_last"]
        assert measured == pytest.approx(recorded, rel=0.05)
        assert results["adapters"][stage]["loss_reduction"]["eval_loss_last"] == pytest.approx(recorded)
    judge = results["judge"]["per_adapter"]["stage2"]
    assert judge["judgements"] == 8 and judge["n"] + judge["invalid"] == 4
    assert "sk-test-secret-key-000" not in (out / "results.json").read_text() + printed

    report = (out / "report.md").read_text()
    typed = EvalResults.read(out / "results.json")  # read back from disk: the same file, the same report
    assert typed.to_dict() == results and render_report(typed) == report
    for row in ("| base |", "| stage1 |", "| stage2 |"):
        assert row in report
    assert "rubric accuracy (n=4)" in report and "judge win rate" in report and "## Pairwise judge" in report
    assert results["base"]["chat_template_sha256"] in report
    for stage, gate in results["gate"].items():
        assert f"**{stage}: {gate['verdict'].upper()}** — {gate['summary']}" in report
    assert "## Adapter − base, question by question" in report and "No contaminated item." in report
    assert "agreement of both orders" in report

    # the verdict is in each stage's lineage, and the lineage as trained is still recoverable byte for byte
    s1_lineage = json.loads((run_copy / "stage1" / "lineage.json").read_text())
    assert s1_lineage["evaluation"]["passed"] == results["gate"]["stage1"]["passed"]
    assert s1_lineage["evaluation"]["verdict"] == results["gate"]["stage1"]["verdict"]
    assert (run_copy / "stage1" / s1_lineage["evaluation"]["results"]).resolve() == (out / "results.json").resolve()
    del s1_lineage["evaluation"]
    write_json(run_copy / "as_trained.json", s1_lineage)
    s2_lineage = json.loads((run_copy / "stage2" / "lineage.json").read_text())
    assert file_sha256(run_copy / "as_trained.json") == s2_lineage["parent_adapter"]["lineage_sha256"]

    # push --dry-run: the cards state the verdict; failed adapters are refused unless forced
    push_out = run_copy / "push"
    assert main(["push", "--run", str(run_copy), "--dry-run", "--namespace", "acme", "--out", str(push_out),
                 "--force", "--no-datasets", "--no-space"]) == 0
    printed = capsys.readouterr().out
    for stage, gate in results["gate"].items():
        card = ModelCard.load(push_out / "models" / "acme" / f"demo-{stage}" / "README.md")
        verdict = {"passed": "**Passed** the comparison", "failed": "**Failed** the comparison",
                   "inconclusive": "**Inconclusive** comparison"}[gate["verdict"]]
        assert f"{verdict} with its base model: {gate['summary']}" in card.text
        metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert metrics["rubric_accuracy"] == round(results["adapters"][stage]["metrics"]["rubric_accuracy"], 4)
    assert main(["push", "--run", str(run_copy), "--dry-run", "--namespace", "acme", "--out", str(push_out),
                 "--no-datasets", "--no-space"]) in (0, 2)
    printed = capsys.readouterr().out
    for stage, gate in results["gate"].items():
        assert (f"refused {stage}" in printed) == (verdict_of(gate) == "failed")


# Contamination, grounding and outside prompt sets, on the trained demo run

def test_three_copied_rubric_questions_are_contaminated_and_excluded_and_grounding_is_measured(run_copy, capsys):
    from run_folder import retarget_stage

    from trainer.train.config import DatasetSettings
    from trainer.data.conversations import load_conversations

    questions = select_questions(load_questions(DEFAULT_QUESTIONS), 4)
    copied = questions[:3]
    lineage = json.loads((run_copy / "stage1" / "lineage.json").read_text())
    original = Path(next(iter(lineage["datasets"][0]["file_sha256"])))
    rows = [json.loads(line) for line in original.read_text(encoding="utf-8").splitlines()]
    rows += [{"messages": [{"role": "user", "content": q.question},
                           {"role": "assistant", "content": f"### Answer\n\n- A copied answer to {q.id}."}]}
             for q in copied]
    train = run_copy / "stage1_with_copies.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    retarget_stage(run_copy / "stage1", train)
    spec = json.loads((run_copy / "stage1" / "split.json").read_text())
    trained = {r["sha256"] for r in spec["train"]}
    convs, _ = load_conversations(DatasetSettings(path=str(train)))
    assert sum(c.content_hash in trained for c in convs[-3:]) == 3  # the copies really are training rows

    assert main(["eval", "--run", str(run_copy), "--limit", "4", "--max-new-tokens", "8", "--threads", "1",
                 "--grounded", "--retrieval-k", "3"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((run_copy / "eval" / "results.json").read_text())
    c = results["contamination"]
    assert c["items"] == sorted(q.id for q in copied)
    assert {(m["item"], m["how"], m["stage"]) for m in c["matches"] if m["kind"] == "question"} == \
        {(q.id, "exact", "stage1") for q in copied}
    assert all(m["location"].startswith(str(train)) for m in c["matches"] if m["kind"] == "question")
    assert results["n"]["contaminated_items"] >= 3
    for entry in [results["base"], *results["adapters"].values()]:
        assert "metrics_uncontaminated" in entry
    for stage, entry in results["adapters"].items():
        assert entry["paired_uncontaminated"]["rubric_accuracy"]["n"] == 1  # four questions, three excluded
        assert entry["paired"]["rubric_accuracy"]["n"] == 4
        assert results["gate"][stage]["summary"].endswith("(decided on the uncontaminated items)")
    rubric = {row["id"]: row["contaminated"] for row in results["rubric_by_question"]}
    assert rubric == {q.id: q in copied for q in questions}
    report = (run_copy / "eval" / "report.md").read_text()
    typed = EvalResults.read(run_copy / "eval" / "results.json")
    assert typed.to_dict() == results and render_report(typed) == report
    assert "### Metrics without the" in report and "### Adapter − base without them" in report
    for q in copied:
        assert f"| {q.id[:40]} | question | exact |" in report

    g = results["grounded"]
    assert g["settings"]["k"] == 3 and g["recall"]["k"] == 3
    assert set(g["models"]) == {"base", "stage1", "stage2"}
    for name, entry in g["models"].items():
        assert "rubric_accuracy" in entry["metrics"] and entry["vs_ungrounded"]["rubric_accuracy"]["n"] == 4
    assert "## Grounded in the knowledge base" in report and "grounding" in report
    answers = [json.loads(line) for line in (run_copy / "eval" / "answers.jsonl").read_text().splitlines()]
    assert sum(1 for a in answers if a.get("grounded")) == 3 * 4
    assert all("kb_flags" in a and "contaminated" in a for a in answers)
    assert "contamination: 3 questions" in printed


def shape(value):
    """The keys of a results.json, nested, without the values: what a reader of the file relies on."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [shape(value[0])]
    return type(value).__name__


def test_an_outside_csv_of_prompts_is_evaluated_alone_here_and_through_an_engine(
        run_copy, tmp_path, eval_stub, capsys):
    prompts = tmp_path / "my_prompts.csv"
    lines = ["prompt,reference"]
    for i in range(20):
        reference = "Check the university's official admissions page." if i % 5 == 0 else ""
        lines.append(f'"Question {i}: which documents do I need to study in Canada?",{reference}')
    lines.append('"",missing prompt')  # a malformed row: named, skipped, the rest evaluated
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["eval", "--run", str(run_copy), "--questions", str(prompts), "--max-new-tokens", "4",
                 "--threads", "1", "--no-contamination"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {prompts}:22 (row 21): empty content: prompt is empty" in printed
    results = json.loads((run_copy / "eval" / "results.json").read_text())
    assert results["n"]["prompts"] == 20 and results["n"]["questions"] == 0
    assert results["n"]["prompts_with_reference"] == 4
    # only the prompts: no held-out turn answered, no held-out loss pooled into the prompts' figures
    assert results["n"]["answers_per_model"] == 20 and results["n"]["eval_conversations"] == 0
    assert results["settings"]["questions_kind"] == "prompts" and len(results["settings"]["skipped_prompt_rows"]) == 1
    assert results["rubric_by_question"] == [] and results["contamination"] is None
    assert results["engine"]["name"] == "local"
    for entry in [results["base"], *results["adapters"].values()]:
        assert "rubric_accuracy" not in entry["metrics"] and "eval_loss" not in entry["metrics"]
        assert {"markdown_rate", "kb_contradiction_rate", "rouge_l", "bleu"} <= set(entry["metrics"])
    for gate in results["gate"].values():  # nothing that gates was measured: no verdict either way
        assert gate["verdict"] == "not gated" and "(no rubric question, no judge)" in gate["summary"]
    report = (run_copy / "eval" / "report.md").read_text()
    assert "20 prompts used (4 with a reference answer; no rubric score), 1 rows skipped" in report
    assert "NOT GATED" in report and "INCONCLUSIVE" not in report and "ROUGE-L (n=4)" in report
    assert "## Rubric by question" not in report and "## Held-out loss per split" not in report

    # The same prompts through an OpenAI-compatible server: the results have the same shape; only the engine's
    # record and what was loaded here differ
    url = f"http://127.0.0.1:{eval_stub.server_address[1]}/v1"
    engine_out = tmp_path / "engine"
    assert main(["eval", "--run", str(run_copy), "--questions", str(prompts), "--max-new-tokens", "4",
                 "--no-contamination", "--engine", "openai", "--base-url", url, "--out", str(engine_out)]) == 0
    served = json.loads((engine_out / "results.json").read_text())
    here, there = shape(results), shape(served)
    for key in ("quantization", "engine", "wall_seconds", "load_seconds"):
        here.pop(key), there.pop(key)
    for key in ("generation", "job"):  # how each was asked for: batches here, requests in flight there
        here["settings"].pop(key), there["settings"].pop(key)
    for entry in [here["base"], *here["adapters"].values()]:
        entry.pop("chat_template_sha256")  # the server's template wrote the answers
    assert here == there
    assert served["engine"]["models"] == {"base": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                          "stage1": f"{run_copy.name}/stage1", "stage2": f"{run_copy.name}/stage2"}
    assert "Answers written by the server at" in (engine_out / "report.md").read_text()

    # with the held-out turns asked for, the server answers them and the held-out loss is computed here
    assert main(["eval", "--run", str(run_copy), "--questions", str(prompts), "--max-new-tokens", "4", "--threads",
                 "1", "--no-contamination", "--engine", "openai", "--base-url", url, "--held-out", "--out",
                 str(engine_out)]) == 0
    served = json.loads((engine_out / "results.json").read_text())
    assert served["n"]["answers_per_model"] == 20 + served["n"]["reference_prompts"] > 20
    assert served["quantization"]["load_in_4bit"] is True
    for stage in ("stage1", "stage2"):
        measured = served["adapters"][stage]["eval_loss_by_split"][stage]["loss"]
        recorded = json.loads((run_copy / stage / "metrics.json").read_text())["eval_loss_last"]
        assert measured == pytest.approx(recorded, rel=0.05)
    assert "## Held-out loss per split" in (engine_out / "report.md").read_text()
