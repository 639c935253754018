"""The scripted sub-model's field extraction, and the corpus policy end to end in memory."""

from __future__ import annotations

from rlm_jobs.testing.policies.sub import FIELD_ASK, NOTHING, TEXT_MARK, answer_sub, field_value
from tests.unit.test_policies import drive

INVOICE = "Invoice\nInvoice number: INV-2041\nTotal due: 1250 USD.\n- Customer: ACME\n"


def test_the_best_matching_label_gives_the_value() -> None:
    assert field_value("invoice_number the invoice number", INVOICE) == "INV-2041"
    assert field_value("total_due amount", INVOICE) == "1250 USD"
    assert field_value("customer", INVOICE) == "ACME"
    assert field_value("shipping_address", INVOICE) == NOTHING


def test_a_field_prompt_is_answered_from_its_text() -> None:
    prompt = f"{FIELD_ASK}\nField: total_due\nMeaning: the amount to pay{TEXT_MARK}{INVOICE}"
    assert answer_sub(prompt) == "1250 USD"


def test_the_corpus_policy_answers_from_every_document_that_knows() -> None:
    corpus = {
        "a.pdf": "[page 1]\nNotes.\n\n[page 2]\nThe first half of the vault code is 4417.",
        "b.docx": "# Memo\n\nLunch at noon. The second half of the vault code is 9032.",
        "c.html": "# Menu\n\nThe cafeteria serves soup.",
    }
    run = drive("corpus", "What are the two halves of the vault code?", corpus)
    assert run.answer == (
        "a.pdf: The first half of the vault code is 4417.\n"
        "b.docx: The second half of the vault code is 9032."
    )
    assert "2 of 3 documents answer: ['a.pdf', 'b.docx']" in "".join(run.outputs)
