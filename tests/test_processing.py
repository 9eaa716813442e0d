import pytest

from stormvl.processing import parse_letter


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("d) cat", "D"),
        ("Answer: A", "A"),
        ("  C  ", "C"),
        ("I think it is B, the cat", "B"),
        ("none", None),
    ],
)
def test_letter_parser(text, letter):
    assert parse_letter(text, 4) == letter


def test_video_position_after_puts_the_placeholder_after_the_question(tiny_model):
    _, proc = tiny_model(video_position="after")
    text = proc.prompt_text("what happens ?", ["red", "blue"])
    assert text.index("what happens") < text.index("<video>") < text.index("assistant")
    _, proc = tiny_model()
    assert proc.prompt_text("what happens ?").index("<video>") < proc.prompt_text("what happens ?").index("what")
