"""How artifacts read on the asset pages (medcot_pipeline.presentation, wrapped by defs/metadata.py): tags kept
visible, text cut at a word, numbers rounded one way, every answer shown with its flags, the verdict first, and
lora_adapter's page without empty or constant entries and with a curve that shows inline."""

import json
import re
from urllib.parse import unquote

import dagster as dg
from huggingface_hub import ModelCard

from medcot_pipeline.defs.metadata import metadata_values, model_card_markdown
from medcot_pipeline.evaluation.release_gate import decide
from medcot_pipeline.presentation.answers import answer_flags, answers_side_by_side, answers_table, best_and_worst, is_looping, read_samples
from medcot_pipeline.presentation.charts import CHART_WIDTH, INLINE_LIMIT, LossSeries, loss_chart_markdown
from medcot_pipeline.presentation.entries import Markdown, Table
from medcot_pipeline.presentation.report import rouge_report_page
from medcot_pipeline.presentation.text import number_text, rounded, score_text, shorten, table_cell
from medcot_pipeline.presentation.training import lora_adapter_page
from medcot_pipeline.settings import EvaluationSettings, TrainingSettings
from medcot_pipeline_tests.contract_factories import evaluation_report, training_summary


def test_tags_stay_visible_and_cells_stay_one_cell():
    assert table_cell("<think>a | b\nc</think>") == "&lt;think&gt;a \\| b c&lt;/think&gt;"


def test_text_is_cut_at_a_word_never_inside_one():
    text = "Iron deficiency anemia is microcytic and hypochromic"
    assert shorten(text, len(text)) == text
    cut = shorten(text, 30)
    assert cut == "Iron deficiency anemia is…" and len(cut) <= 30
    assert shorten("Supercalifragilistic", 8) == "Superca…"  # one long word: cut where it must be


def test_numbers_are_rounded_for_reading():
    assert rounded(0.1084807886543312) == 0.1085
    assert rounded(0.00002727272727272727) == 2.727e-05
    assert rounded(None) is None and rounded(3) == 3
    assert number_text(0.00002727272727272727) == "2.73e-05"
    assert number_text(135_000_000) == "135,000,000"
    assert score_text(2.19381) == "2.194" and score_text(None) == "n/a"


# A well-formed answer, one that nests its tags, one that loops until it is cut off, and a base model's untagged text.
FINE_TUNED = [
    "<think>ST elevation in II, III, aVF.</think><response>Inferior myocardial infarction</response>",
    "<think><think>Low ferritin.</think></think><response>Iron deficiency anemia</response>",
    "<think>Stridor and a barking cough.</think><response>Croup" + " <response>Croup" * 12,
    "<think>Painless jaundice and a palpable gallbladder.</think><response>Pancreatic head cancer</response>",
    "<think>Peaked T waves.</think><response>Hyperkalaemia</response>",
    "<think>Fever, neck stiffness.</think><response>Bacterial meningitis</response>",
]


def samples_file(tmp_path):
    """samples.jsonl as evaluation/report.py writes it, for six questions: the fine-tuned lines, then the base's."""
    from medcot_pipeline.tagged_output import parse_tagged_output

    rows = []
    for label in ("fine_tuned", "base"):
        for i in range(6):
            output = FINE_TUNED[i] if label == "fine_tuned" else "It is probably angina."
            parsed = parse_tagged_output(output)
            rows.append({
                "model": label, "index": i, "question": f"Question {i}: chest pain <b>radiating</b>?",
                "reference": f"Reference answer {i}", "output": output, "think": parsed.think, "response": parsed.response,
                "scored_response": parsed.response or output, "compliant": parsed.compliant, "problems": list(parsed.problems),
                "rouge_l_response": [0.41, 0.3, 0.05, 0.2, 0.12, 0.5][i] if label == "fine_tuned" else 0.05,
                "truncated": label == "base" or i == 2, "new_tokens": 160 if i == 2 else 48,
            })
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_every_answer_is_shown_with_what_is_wrong_with_it(tmp_path):
    path = samples_file(tmp_path)
    assert list(read_samples(path)) == [0, 1, 2, 3, 4, 5]

    table = answers_table(path)
    rows = [(record["#"], record["from"], record["text"]) for record in table.records]
    assert len(rows) == 6 * 4  # all six questions, not the first three: question, reference, base, fine-tuned
    assert rows[:4] == [
        (1, "question", "Question 0: chest pain <b>radiating</b>?"),  # a plain-text cell: shown as written
        (1, "reference", "Reference answer 0"),
        (1, "base model: ROUGE-L 0.050; no <think>/<response> tags; cut off at 48 tokens", "It is probably angina."),
        (1, "fine-tuned: ROUGE-L 0.410; well-formed", "Inferior myocardial infarction"),  # the response, reasoning aside
    ]
    # The nested answer is shown as written, so <think><think> cannot look clean; the loop is called a loop.
    nested = next(r for r in rows if r[0] == 2 and r[1].startswith("fine-tuned"))
    assert "malformed: nested <think>" in nested[1] and nested[2].startswith("<think><think>")
    looping = next(r for r in rows if r[0] == 3 and r[1].startswith("fine-tuned"))
    assert "looping" in looping[1] and "cut off at 160 tokens" in looping[1]

    text = answers_side_by_side(path).text
    assert text.count("### Question") == 6 and "### Question 6 of 6" in text
    assert "| Reference | Base model, ROUGE-L 0.050 | Fine-tuned, ROUGE-L 0.410 |" in text
    # The response in bold, the reasoning after it, tags visible where the answer is malformed.
    assert "✓ well-formed · **Inferior myocardial infarction** · _reasoning:_ ST elevation in II, III, aVF." in text
    assert "**⚠ malformed: nested &lt;think&gt;" in text and "_as written:_ &lt;think&gt;&lt;think&gt;Low ferritin." in text
    assert "chest pain &lt;b&gt;radiating&lt;/b&gt;?" in text

    many = answers_side_by_side(path, limit=2).text
    assert many.startswith("_The first 2 of 6 questions; every answer is in samples.jsonl._")  # a cap is stated


def test_flags_name_loops_malformed_tags_and_cuts():
    assert is_looping("<think>a</think>" + "<response>" * 30)
    assert is_looping("The patient has croup. " * 6)
    assert not is_looping("Iron deficiency anemia is microcytic and hypochromic, from chronic blood loss or poor intake.")
    flags = answer_flags({"compliant": False, "problems": ["nested <think>"], "output": "x", "truncated": True, "new_tokens": 160})
    assert flags.text() == "malformed: nested <think>; cut off at 160 tokens"
    assert answer_flags({"compliant": True, "output": "<think>a</think><response>b</response>"}).text() == "well-formed"


def test_best_and_worst_answer(tmp_path):
    best, worst = best_and_worst(samples_file(tmp_path))
    assert best["index"] == 5  # well-formed, highest ROUGE-L
    assert worst["index"] == 2  # malformed, looping and cut off: worse than merely malformed (question 2)


def test_rouge_report_opens_with_the_verdict_and_a_disabled_gate_is_no_pass(tmp_path):
    from medcot_pipeline.evaluation.paired_stats import compare

    path = samples_file(tmp_path)
    held_out = EvaluationSettings(gate_accuracy_lower_bound=None)  # what rouge_report's page judges
    report = evaluation_report(n=6, settings=held_out, comparisons=[
        compare("rouge_l_response", "ROUGE-L", [0.4, 0.3, 0.5, 0.35, 0.45, 0.42], [0.1, 0.12, 0.2, 0.15, 0.1, 0.11]),
        compare("format_compliance", "well-formed", [1.0] * 6, [0.0] * 6, right_or_wrong=True),
    ])
    page = rouge_report_page(report, decide(report), path, training_summary())
    assert list(page)[:4] == ["verdict", "loss_curve", "best_answer", "worst_answer"]
    assert all(len(page[key].text) < INLINE_LIMIT for key in ("verdict", "loss_curve", "best_answer", "worst_answer"))
    verdict = page["verdict"].text
    assert verdict.startswith("**✅ Release gate PASSED**")
    assert "- ✓ format compliance (fine-tuned): 0.960, needs ≥ 0.900" in verdict
    # Each difference with its 95% paired interval and what the interval says.
    assert re.search(r"- ROUGE-L \(response\): 0\.130 → 0\.403, \+0\.273 \[\+0\.\d{3}, \+0\.\d{3}\]: better", verdict), verdict
    assert "**Worst answer**: question 3 of 6" in page["worst_answer"].text
    assert "answer limit" in page["evaluation"].text and "1024 new tokens, + 512 for an answer still open (1536 in all)" in page["evaluation"].text

    off = evaluation_report(n=6, settings=EvaluationSettings(gate_enabled=False))
    verdict = rouge_report_page(off, decide(off), path, None)["verdict"].text
    assert verdict.startswith("**⚪ Release gate DISABLED: it blocks nothing, this is not a pass**")
    assert "PASSED" not in verdict and "(not enforced)" in verdict
    # The page judges what the report holds: the benchmark criteria are the release_gate check's, and it says so.
    assert "benchmark accuracy is judged by the release_gate check" in verdict

    values = metadata_values(page)
    assert isinstance(values["verdict"], dg.MarkdownMetadataValue) and isinstance(values["answers"], dg.TableMetadataValue)


def test_the_lora_adapter_page_fits_and_charts_only_what_changes():
    summary = training_summary(
        loss_per_step=[
            {"step": s, "loss": 2.5 - 0.1 * s, "learning_rate": 1e-3, "grad_norm": 1.0 + s / 10, "tokens_seen": 300 * s,
             "tokens_per_second": 20.0 + s, "elapsed_s": 3.0 * s, "peak_gpu_memory_gib": None}
            for s in range(1, 13)
        ],
        eval_losses=[{"step": 12, "eval_loss": 2.19381}],
        graded_steps=[{"step": 12, "eval_loss": 2.19381, "format_compliance": 0.75, "rouge_l_response": 0.2,
                       "truncation_rate": 0.25, "grade": 0.8}],
        graded_questions=4, kept_step=12, global_step=12, peak_gpu_memory_gib=None, wandb=None,
        settings=TrainingSettings(max_steps=12, eval_steps=12, save_steps=12),
    )
    page = lora_adapter_page(summary)
    # Nothing empty: no null GPU memory on a CPU run, neither as a number the Plots tab draws nor as a column.
    assert "peak_gpu_memory_gib" not in page and "wandb_run" not in page and "resumed_from" not in page
    # Wide tables split; a column that is the same at every step is stated once instead.
    for name in ("loss_per_step", "speed_per_step", "graded_steps"):
        assert isinstance(page[name], Table) and len(page[name].columns) <= 6, name
    assert [name for name, _ in page["loss_per_step"].columns] == ["step", "loss", "grad_norm"]
    assert "| learning rate (every step) | 0.001 |" in page["training"].text
    assert "| processes | 1 |" in page["training"].text and "| steps | 12 |" in page["training"].text
    numbers = {key for key, value in page.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert "processes" not in numbers and numbers <= {
        "train_loss_final", "eval_loss_final", "global_step", "kept_step", "kept_compliance",
        "kept_rouge_l", "tokens_per_second", "training_seconds"}
    # The curve shows inline, full width, its evaluation labelled with its grade.
    curve = page["loss_curve"].text
    assert len(curve) < INLINE_LIMIT and curve.startswith("![loss per step](<data:image/svg+xml,")
    svg = unquote(curve[curve.index("<data:") + len("<data:image/svg+xml,"):-2])
    assert f"width='{CHART_WIDTH}'" in svg and "12: 75% well-formed, kept" in svg and "2.500" not in svg


def test_a_long_run_still_charts_inline_with_every_evaluation_labelled():
    series = LossSeries(
        train=[(s, 3.0 - s / 100) for s in range(1, 68)], evals=[(17, 2.24), (34, 2.29), (51, 2.44), (67, 2.55)],
        compliance={17: 0.44, 34: 0.75, 51: 0.94, 67: 1.0}, kept_step=67,
    )
    text = loss_chart_markdown(series)
    assert len(text) < INLINE_LIMIT
    assert all(re.search(rf">{step}: \d+%", unquote(text)) for step in (17, 34, 51, 67))


def test_the_model_card_shows_its_front_matter_as_yaml_and_its_body_whole():
    body = "# medcot\n\n" + "A long card. " * 1000
    card = ModelCard(f"---\nlicense: llama3.2\ntags:\n- medical\n---\n{body}")
    text = model_card_markdown(card).value
    assert text.startswith("```yaml\nlicense: llama3.2\ntags:\n- medical\n```")
    assert text.endswith(body.strip())


def test_markdown_entries_become_markdown_values():
    values = metadata_values({"md": Markdown("**x**"), "n": 3})
    assert isinstance(values["md"], dg.MarkdownMetadataValue) and values["n"] == 3
