"""scripts/build_storm_smol.py: the training sentences and the free-form scoring behind the
storm-smol table."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_storm_smol", ROOT / "scripts" / "build_storm_smol.py")
smol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smol)


def _record(task, options, answer, **truth):
    return {"task_type": task, "options": options, "answer": answer, "extra": {"truth": truth}}


RECORDS = [
    _record("direction", ["down", "left", "up", "right"], "A", caption="the green cross moves down"),
    _record("count", ["three", "four", "one", "two"], "D", caption="the white square flashes two times"),
    _record(
        "order",
        ["red cross", "white circle", "cyan circle", "orange triangle"],
        "B",
        caption="the white circle appears then the orange triangle",
    ),  # fmt: skip
    _record("recall", ["triangle", "cross", "square", "circle"], "A", caption="the triangle is shown first"),
    _record("state", ["magenta", "blue", "orange", "yellow"], "A", caption="the cross is magenta then orange"),
]


def test_each_training_sentence_names_its_answer_and_no_other_option():
    for r in RECORDS:
        text = smol.sentence(r)
        assert text[0].isupper() and text.endswith(".")
        assert smol.free_form_right(text, r), (r["task_type"], text)
    # The order caption names both shapes, so it cannot be the order question's answer.
    assert not smol.free_form_right(RECORDS[2]["extra"]["truth"]["caption"], RECORDS[2])


def test_free_form_scoring_wants_the_answer_alone_and_as_whole_words():
    direction, count = RECORDS[0], RECORDS[1]
    assert smol.free_form_right("It moves DOWN.", direction)
    assert not smol.free_form_right("It moves left, then down.", direction)  # two options named
    assert not smol.free_form_right("It moves downward.", direction)  # not the word itself
    assert not smol.free_form_right("I cannot tell.", direction)
    assert smol.free_form_right("The white square flashes two times.", count)
    assert not smol.free_form_right("It flashes twenty times.", count)
