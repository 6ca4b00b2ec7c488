"""How artifacts read on the asset pages (defs/metadata.py): tags kept visible, text cut at a word, numbers
rounded, the answers to one question together, the model card's front matter as YAML and its body whole."""

import json

import dagster as dg
from huggingface_hub import ModelCard

from medcot_pipeline.defs.metadata import (
    answers_side_by_side,
    answers_table,
    model_card_markdown,
    number_text,
    read_samples,
    rounded,
    shorten,
    table_cell,
)


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


def samples_file(tmp_path):
    """samples.jsonl as evaluation/report.py writes it: the fine-tuned model's lines, then the base model's."""
    rows = []
    for label, answer in (("fine_tuned", "<think>ST elevation</think><response>Myocardial infarction</response>"),
                          ("base", "It is probably angina.")):
        for i in range(4):
            rows.append({
                "model": label, "index": i, "question": f"Question {i}: chest pain <b>radiating</b>?",
                "reference": f"Reference answer {i}", "output": answer,
                "scored_response": "Myocardial infarction" if label == "fine_tuned" else answer,
                "rouge_l_response": 0.123456 if label == "fine_tuned" else 0.05,
                "truncated": label == "base", "new_tokens": 48, "compliant": label == "fine_tuned",
            })
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_answers_to_one_question_sit_together(tmp_path):
    path = samples_file(tmp_path)
    assert list(read_samples(path)) == [0, 1, 2, 3]
    table = answers_table(path, limit=2)
    rows = [(record.data["#"], record.data["from"], record.data["text"]) for record in table.value.records]
    assert rows[:4] == [
        (1, "question", "Question 0: chest pain <b>radiating</b>?"),  # a plain-text cell: shown as written
        (1, "reference", "Reference answer 0"),
        (1, "base model, ROUGE-L 0.05", "It is probably angina."),
        (1, "fine-tuned, ROUGE-L 0.123", "Myocardial infarction"),
    ]
    assert len(rows) == 8

    side_by_side = answers_side_by_side(path, limit=2)
    assert isinstance(side_by_side, dg.MarkdownMetadataValue)
    text = side_by_side.value
    assert text.count("### Question") == 2
    assert "| Reference | Base model (ROUGE-L 0.05, cut off at 48 tokens, not in the &lt;think&gt;/&lt;response&gt; format) | Fine-tuned model (ROUGE-L 0.123) |" in text
    assert "&lt;think&gt;ST elevation&lt;/think&gt;&lt;response&gt;Myocardial infarction&lt;/response&gt;" in text
    assert "chest pain &lt;b&gt;radiating&lt;/b&gt;?" in text


def test_the_model_card_shows_its_front_matter_as_yaml_and_its_body_whole():
    body = "# medcot\n\n" + "A long card. " * 1000
    card = ModelCard(f"---\nlicense: llama3.2\ntags:\n- medical\n---\n{body}")
    text = model_card_markdown(card).value
    assert text.startswith("```yaml\nlicense: llama3.2\ntags:\n- medical\n```")
    assert text.endswith(body.strip())
