"""The `medcot ask` command on a tiny random Llama: JSON output, streaming, a bad path, a useless flag."""

import json

from medcot_pipeline.cli import main
from medcot_pipeline.settings import EvaluationSettings
from medcot_pipeline.evaluation.generation import generate_answers, load_for_inference

QUESTION = "Which drug treats strep throat?"


def ask(model, *flags):
    return main(["ask", QUESTION, "--model", str(model), "--device", "cpu", "--max-new-tokens", "4",
                 "--continuation-tokens", "0", *flags])


def test_json_prints_one_object_and_warns_of_the_cut(tiny_llama_dir, capsys):
    assert ask(tiny_llama_dir, "--json", "--no-stream") == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert set(result) == {"question", "think", "response", "truncated", "compliant", "new_tokens"}
    assert result["question"] == QUESTION
    assert (result["truncated"], result["compliant"], result["new_tokens"]) == (True, False, 4)
    assert "medcot: warning: the answer was cut off after 4 tokens" in err


def test_a_bad_model_path_exits_2_with_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no_model"
    assert ask(missing, "--json", "--no-stream") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"medcot: error: model path {missing} does not exist\n"


def test_streaming_writes_tokens_to_stderr_and_sections_to_stdout(tiny_llama_dir, capsys):
    model, tokenizer = load_for_inference(str(tiny_llama_dir), device="cpu")
    config = EvaluationSettings(batch_size=1, max_new_tokens=4, continuation_tokens=0)
    text = generate_answers(model, tokenizer, [QUESTION], config).answers[0].text
    capsys.readouterr()  # drop the library's own chatter from loading

    assert ask(tiny_llama_dir) == 0
    out, err = capsys.readouterr()
    # No tags in a random model's output: the raw text is the answer, "(empty)" when it is only whitespace.
    assert out == f"## Reasoning\n\n(no <think> block)\n\n## Answer\n\n{text.strip() or '(empty)'}\n"
    assert err.startswith(text + "\n")  # the streamed tokens, then the line ask() ends
    assert "medcot: warning: the answer was cut off after 4 tokens" in err


def test_temperature_without_sample_warns(tiny_llama_dir, capsys):
    assert ask(tiny_llama_dir, "--json", "--no-stream", "--temperature", "0.3") == 0
    assert "medcot: warning: --temperature has no effect without --sample" in capsys.readouterr().err
