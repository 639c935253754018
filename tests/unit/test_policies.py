"""Scripted policies: their parsing helpers, their sub answers, and whole conversations run
through a minimal in-memory REPL driver (no sandbox, no HTTP) to prove the code they write
runs and computes its answer from the data."""

from __future__ import annotations

import contextlib
import io
import traceback
from dataclasses import dataclass, field
from typing import Any

import pytest

from rlm_jobs import parsing, prompts
from rlm_jobs.clients.base import ChatMessage
from rlm_jobs.contexts import describe
from rlm_jobs.models import ContextRef
from rlm_jobs.testing.policies import (
    POLICIES,
    ContextInfo,
    Conversation,
    block_outputs,
    is_root,
    parse_context_info,
    respond,
)
from rlm_jobs.testing.policies.base import render
from rlm_jobs.testing.policies.sub import (
    COMBINE_ASK,
    FIELD_ASK,
    LABEL_ASK,
    NEEDLE_ASK,
    NOTHING,
    TEXT_MARK,
    answer_sub,
    classify,
    extract,
    field_value,
)
from sandbox.records import ToolSpec


def ref_for(value: Any) -> ContextRef:
    kind, length, total = describe(value)
    return ContextRef.model_validate(
        {"sha256": "0" * 64, "kind": kind, "length": length, "total_chars": total}
    )


def opening(query: str, value: Any) -> list[ChatMessage]:
    ref = ref_for(value)
    return [
        {"role": "system", "content": prompts.system_prompt(ref)},
        {"role": "user", "content": prompts.first_user_message(query, ref)},
    ]


# ---- parsing helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x" * 1234, ContextInfo("str", 1234, 1234)),
        (["ab", "cde"], ContextInfo("list", 2, 5)),
        ({"k": "value"}, ContextInfo("dict", 1, 6)),
        (["y" * 5000] * 300, ContextInfo("list", 300, 1_500_000)),
    ],
)
def test_context_description_round_trips(value: Any, expected: ContextInfo) -> None:
    assert parse_context_info(ref_for(value).describe()) == expected


def test_context_description_absent() -> None:
    assert parse_context_info("no description here") is None


def test_block_outputs_splits_blocks_and_drops_the_turn_trailer() -> None:
    feedback = prompts.turn_feedback([("print(1)", "1\n"), ("x = 2\nprint(x)", "2")], 3, 10)
    assert block_outputs(feedback) == ["1", "2"]


def test_block_outputs_of_feedback_without_blocks() -> None:
    assert block_outputs(prompts.turn_feedback([], 1, 5)) == []


def test_is_root_only_for_our_system_prompt() -> None:
    messages = opening("q", "ctx")
    assert is_root(messages)
    assert not is_root(messages[1:])
    assert not is_root([{"role": "system", "content": "be brief"}])
    assert not is_root([])


def test_conversation_reads_query_turn_outputs_and_last_call() -> None:
    messages = opening("How many cats?\nCount carefully.", ["a", "b", "c"])
    first = Conversation.parse(messages)
    assert first.query == "How many cats?\nCount carefully."
    assert first.context == ContextInfo("list", 3, 3)
    assert (first.turn, first.outputs, first.last_call) == (0, (), False)

    messages += [
        {"role": "assistant", "content": "```repl\nprint(3)\n```"},
        {"role": "user", "content": prompts.turn_feedback([("print(3)", "3 cats")], 1, 1)},
        {"role": "user", "content": prompts.last_call_message()},
    ]
    later = Conversation.parse(messages)
    assert (later.turn, later.outputs, later.last_call) == (1, ("3 cats",), True)
    assert later.best_answer(default="none") == "3 cats"


def test_conversation_keeps_the_query_after_a_user_note() -> None:
    ref = ref_for("abc")
    first = prompts.first_user_message("the query", ref, root_prompt="a hint")
    conv = Conversation.parse([{"role": "user", "content": first}])
    assert conv.query == "the query"


def test_best_answer_skips_tracebacks_and_loop_notes() -> None:
    conv = Conversation(
        query="q",
        context=None,
        turn=2,
        outputs=("found 7", "x\n[note] cell replaced", "Traceback (most recent call last):\n..."),
        last_call=True,
    )
    assert conv.best_answer(default="none") == "x"


def test_render_embeds_values_as_literals() -> None:
    nasty = 'He said "hi"\n$oops \\ {braces}'
    code = render("question = $query\nresult = question", query=nasty)
    namespace: dict[str, Any] = {}
    exec(compile(code, "<policy>", "exec"), namespace)
    assert namespace["result"] == nasty


# ---- sub answers -----------------------------------------------------------------------


def test_extract_picks_the_sentences_that_share_most_words() -> None:
    text = "Cats sleep a lot. The capital of France is Paris. Dogs bark."
    assert extract("What is the capital of France?", text) == "The capital of France is Paris."
    assert extract("Who won the chess tournament?", text) == "NONE"


def test_sub_answers_each_prompt_shape() -> None:
    assert answer_sub(f"{NEEDLE_ASK}\n\nnoise\nThe secret code is K9-ZED.\nmore") == "K9-ZED"
    assert answer_sub(f"{NEEDLE_ASK}\n\nnothing here") == "NONE"
    labels = answer_sub(f"{LABEL_ASK}\n\n1. I love it, great!\n2. Awful, I hate it.\n3. Meh.")
    assert labels == "positive\nnegative\nnegative"
    combined = answer_sub(f"Question: q\n\n{COMBINE_ASK}\n- a fact\n- NONE\n- a fact\n- more")
    assert combined == "a fact\nmore"
    part = "Question: Where is the key?\n\nPart 2 of 3:\nThe key is under the mat. Rain."
    assert answer_sub(part) == "The key is under the mat."


def test_classify_counts_keywords() -> None:
    assert classify("Excellent food and great service") == "positive"
    assert classify("terrible, worst meal") == "negative"


def test_respond_in_sub_mode_reads_the_last_user_message() -> None:
    messages: list[ChatMessage] = [
        {"role": "user", "content": f"{NEEDLE_ASK}\n\nThe secret code is AB1."}
    ]
    assert respond(POLICIES["generic"], messages) == "AB1"


# ---- whole conversations through a minimal REPL ----------------------------------------


@dataclass
class Run:
    answer: str | None = None
    turns: int = 0
    outputs: list[str] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)


def drive(
    policy: str,
    query: str,
    context: Any,
    *,
    max_iterations: int = 8,
    max_depth: int = 1,
    depth: int = 0,
    run: Run | None = None,
) -> Run:
    """The loop's contract in miniature: reply → run blocks → feed back, until FINAL."""
    run = run or Run()
    run.depths.append(depth)
    messages = opening(query, context)
    finished: list[str] = []
    answer = {"content": "", "ready": False}

    def llm_query(prompt: str, model: str | None = None) -> str:
        return respond(POLICIES[policy], [{"role": "user", "content": prompt}])

    def rlm_query(prompt: str, model: str | None = None) -> str:
        if depth >= max_depth:
            return llm_query(prompt)
        child = drive(
            policy, prompts.CHILD_QUERY, prompt, max_depth=max_depth, depth=depth + 1, run=run
        )
        return child.answer or ""

    namespace: dict[str, Any] = {
        "context": context,
        "llm_query": llm_query,
        "llm_query_batched": lambda ps, model=None: [llm_query(p) for p in ps],
        "rlm_query": rlm_query,
        "rlm_query_batched": lambda ps, model=None: [rlm_query(p) for p in ps],
        "SHOW_VARS": lambda: "",
        "answer": answer,
        "FINAL": lambda text: finished.append(str(text)),
        "FINAL_VAR": lambda name: finished.append(str(namespace[name])),
    }
    for _ in range(max_iterations):
        reply = respond(POLICIES[policy], messages)
        messages.append({"role": "assistant", "content": reply})
        if depth == 0:
            run.turns += 1
        feedback = []
        for code in parsing.code_blocks(reply):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    exec(compile(code, "<cell>", "exec"), namespace)
                except Exception:
                    print(traceback.format_exc())
            feedback.append((code, out.getvalue()))
            if depth == 0:
                run.outputs.append(out.getvalue())
            if finished or answer["ready"]:
                run.answer = finished[-1] if finished else str(answer["content"])
                return run
        in_text = parsing.final_in_text(reply)
        if in_text is not None:
            run.answer = in_text.text
            return run
        messages.append({"role": "user", "content": prompts.turn_feedback(feedback, 1, 9)})
    messages.append({"role": "user", "content": prompts.last_call_message()})
    final = parsing.final_in_text(respond(POLICIES[policy], messages))
    run.answer = final.text if final else None
    return run


def haystack(lines: int, secret_at: int, token: str) -> str:
    rows = [f"Line {i}: the weather report says nothing of note today." for i in range(lines)]
    rows[secret_at] = f"The secret code is {token}."
    return "\n".join(rows)


def test_generic_answers_from_the_data_over_many_chunks() -> None:
    context = haystack(3000, 2345, "ignored")
    context += "\nThe launch window for the probe opens on March 3rd."
    run = drive("generic", "When does the launch window for the probe open?", context)
    assert run.answer == "The launch window for the probe opens on March 3rd."
    assert run.turns == 3


@pytest.mark.parametrize("shape", ["list", "dict"])
def test_generic_handles_lists_and_dicts(shape: str) -> None:
    items = [f"Record {i} is unremarkable." for i in range(50)] + [
        "The vault password is kept in Oslo."
    ]
    context: Any = items if shape == "list" else {f"k{i}": v for i, v in enumerate(items)}
    run = drive("generic", "Where is the vault password kept?", context)
    assert run.answer is not None and "kept in Oslo" in run.answer


def test_needle_finds_the_token_in_a_huge_string() -> None:
    run = drive("needle", "What is the secret code?", haystack(40_000, 31_337, "QX-4471"))
    assert run.answer == "QX-4471"


@pytest.mark.parametrize("as_json", [False, True])
def test_aggregate_counts_positive_reviews(as_json: bool) -> None:
    texts = ["I love this, great value", "terrible, I hate it", "excellent service"] * 40
    texts += ["awful and boring"] * 7
    records: list[Any] = (
        [{"id": i, "review": t} for i, t in enumerate(texts)]
        if as_json
        else [f"id={i}; review: {t}" for i, t in enumerate(texts)]
    )
    run = drive("aggregate", "How many reviews are positive?", records)
    assert run.answer == "80"


def test_recurse_builds_a_depth_two_tree_and_finishes_in_prose() -> None:
    filler = [f"Paragraph {i} talks about gardening and soil." for i in range(400)]
    filler[333] = "The treasure is buried beneath the old oak tree."
    run = drive("recurse", "Where is the treasure buried?", "\n".join(filler), max_depth=2)
    assert run.answer == "The treasure is buried beneath the old oak tree."
    assert max(run.depths) == 2


def test_recurse_reads_short_contexts_directly() -> None:
    run = drive("recurse", "What colour is the door?", "The door is painted red.")
    assert run.answer == "The door is painted red."
    assert run.depths == [0]


def test_recover_fixes_its_error_with_the_variable_set_before_it() -> None:
    run = drive("recover", "How long is the context?", "one two three")
    assert "Traceback" in run.outputs[0] and "KeyError" in run.outputs[0]
    assert run.answer == "13 items, 3 words"


def test_stall_answers_from_its_output_when_asked_for_a_final_answer() -> None:
    run = drive("stall", "q", "abcdef", max_iterations=3)
    assert run.answer == "step 2: the context still has 6 items"


def test_errors_fail_every_cell() -> None:
    run = drive("errors", "q", "abc", max_iterations=4)
    assert all("RuntimeError: scripted failure" in out for out in run.outputs)
    assert run.answer == "no answer"


def test_spin_writes_an_endless_loop_and_chatty_writes_long_replies() -> None:
    spin = respond(POLICIES["spin"], opening("q", "abc"))
    assert parsing.code_blocks(spin) == ["while True:\n    pass"]
    chatty = respond(POLICIES["chatty"], opening("q", "abc"))
    assert len(chatty) > 12_000 and len(parsing.code_blocks(chatty)) == 1


def test_every_policy_answers_the_last_call_with_final() -> None:
    for name, policy in POLICIES.items():
        messages = opening("q", "abc")
        messages.append({"role": "user", "content": prompts.last_call_message()})
        found = parsing.final_in_text(respond(policy, messages))
        assert found is not None and found.text, name


# ---- the document policies (corpus, fields) ------------------------------------------

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


def test_a_conversation_knows_its_tools_and_which_question_of_a_session_it_is() -> None:
    ref = ref_for("apples: 1")
    tools = [ToolSpec(name="fx_rate", signature="(c)", doc="Rate.\n\nMore."), ToolSpec(name="x")]
    messages: list[ChatMessage] = [
        {"role": "system", "content": prompts.system_prompt(ref, tools)},
        {"role": "user", "content": prompts.first_user_message("first?", ref)},
        {"role": "assistant", "content": "```repl\nprint(1)\n```"},
        {"role": "user", "content": prompts.turn_feedback([("print(1)", "1")], 1, 30)},
        {"role": "assistant", "content": "FINAL(1)"},
        {
            "role": "user",
            "content": prompts.followup_user_message("second?", ref, 1, previous_answer="1"),
        },
    ]
    conv = Conversation.parse(messages)
    assert conv.tools == ("fx_rate", "x")
    # Everything else is about the latest question only
    assert (conv.question, conv.query, conv.turn, conv.outputs) == (2, "second?", 0, ())
    assert conv.context == ContextInfo("str", 9, 9)
    first = Conversation.parse(messages[:4])
    assert (first.question, first.query, first.turn, first.outputs) == (1, "first?", 1, ("1",))
    assert Conversation.parse(opening("q", "abc")).tools == ()
