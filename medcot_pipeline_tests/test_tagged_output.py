"""parse_tagged_output: the think/response bodies and the exact tag problems of hand-made outputs."""

import pytest

from medcot_pipeline.tagged_output import parse_tagged_output


def test_a_compliant_output_has_both_bodies_and_no_problems():
    parsed = parse_tagged_output("  <think>Low ferritin.</think>\n<response>Iron deficiency.</response>\n")
    assert (parsed.think, parsed.response) == ("Low ferritin.", "Iron deficiency.")
    assert parsed.compliant and parsed.response_closed
    assert parsed.problems == ()


def test_an_empty_think_block_is_still_compliant():
    parsed = parse_tagged_output("<think></think><response>Rest.</response>")
    assert parsed.think == ""
    assert parsed.response == "Rest."
    assert parsed.compliant


# Each broken output: (text, think, response, response_closed, problems).
BROKEN = {
    "truncated": (
        "<think>Check the smear.</think><response>Most likely parvo",
        "Check the smear.", "Most likely parvo", False, ("missing </response>",),
    ),
    "nested think": (
        "<think>outer <think>inner</think> tail</think><response>B</response>",
        "outer inner tail", "B", True, ("nested <think>",),
    ),
    "text after response": (
        "<think>t</think><response>A</response> Hope this helps!",
        "t", "A", True, ("text after </response>",),
    ),
    "response before think": (
        "<response>A</response><think>t</think>",
        None, "A", True, ("<response> before <think>",),
    ),
    "two response blocks": (
        "<think>t</think><response>first</response><response>second</response>",
        "t", "first", True, ("more than one <response> block",),
    ),
    "no tags": ("The answer is C.", None, None, False, ("no tags",)),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_outputs_name_their_problem(case):
    text, think, response, closed, problems = BROKEN[case]
    parsed = parse_tagged_output(text)
    assert (parsed.think, parsed.response, parsed.response_closed) == (think, response, closed)
    assert parsed.problems == problems
    assert not parsed.compliant
