"""Contamination: eval questions and held-out conversations found in training rows, exactly or nearly."""

from __future__ import annotations

from trainer.data.contamination import EvalItem, TrainingRow, find_contamination


def row(n: int, question: str, answer: str = "An answer long enough to be a real counselling answer.",
        stage: str = "stage1") -> TrainingRow:
    return TrainingRow(f"train.jsonl:{n}", stage, ({"role": "user", "content": question},
                                                   {"role": "assistant", "content": answer}))


QUESTIONS = [
    "How many universities can I apply to through UCAS for an undergraduate degree in the UK?",
    "Is health insurance compulsory for international students in Australia, and what is OSHC?",
    "Which documents do I need for a Canadian study permit application from India?",
    "Can I work while studying for a master's degree in Germany, and how many days per year?",
]


def test_exact_and_near_copies_of_questions_are_found_and_others_are_not():
    training = [row(1, "What should I pack for winter in Toronto?"),
                row(2, "  how many universities can I apply to through UCAS for an undergraduate degree in the uk? "),
                row(3, "Is health insurance compulsory for international students in Australia, and what is OSHC exactly?",
                    stage="stage2"),
                row(4, "Tell me about scholarships for Nigerian students in the Netherlands.")]
    items = [EvalItem(f"q{i}", "question", q) for i, q in enumerate(QUESTIONS)]
    matches = find_contamination(items, training)
    assert [(m.item, m.how, m.location, m.stage) for m in matches] == [
        ("q0", "exact", "train.jsonl:2", "stage1"), ("q1", "near", "train.jsonl:3", "stage2")]
    assert 0.8 <= matches[1].similarity < 1.0


def test_a_question_inside_a_longer_training_message_is_not_a_copy_but_a_held_out_conversation_is():
    question = QUESTIONS[2]
    training = [row(1, "Hi! I have many questions today about everything: visas, money, housing, jobs, and "
                       "also " + question + " Also what about my family, can they come along with me?")]
    assert find_contamination([EvalItem("q", "question", question)], training) == []
    held_out = training[0]
    conv = "\n".join(f"{m['role']}: {m['content']}" for m in held_out.messages)
    found = find_contamination([EvalItem("c", "conversation", conv)], training)
    assert [(m.item, m.how) for m in found] == [("c", "exact")]


def test_nothing_to_compare_is_no_contamination():
    assert find_contamination([], [row(1, "x")]) == []
    assert find_contamination([EvalItem("q", "question", "anything")], []) == []
