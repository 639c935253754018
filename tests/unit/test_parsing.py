from rlm_jobs.parsing import code_blocks, final_in_text, prose


def test_code_blocks_are_found_in_order_and_other_fences_ignored() -> None:
    reply = (
        "Let me look.\n```repl\nx = 1\nprint(x)\n```\nthen\n"
        "```python\nnot_run()\n```\n```repl\ny = 2\n```\n"
    )
    assert code_blocks(reply) == ["x = 1\nprint(x)", "y = 2"]


def test_final_in_prose_is_read_at_line_start_only() -> None:
    assert final_in_text("I will call FINAL(x) when done.") is None
    found = final_in_text("Done.\nFINAL(The answer is 42)\n")
    assert found is not None and found.text == "The answer is 42"


def test_final_inside_code_block_is_not_prose() -> None:
    reply = "```repl\nFINAL('from code')\n```\n"
    assert final_in_text(reply) is None
    assert "FINAL" not in prose(reply)


def test_final_var_in_prose_names_a_variable() -> None:
    found = final_in_text("FINAL_VAR(result)")
    assert found is not None and found.var_name == "result" and found.text is None
    quoted = final_in_text("FINAL_VAR('summary')")
    assert quoted is not None and quoted.var_name == "summary"
    assert final_in_text("FINAL_VAR(not a name)") is None


def test_final_text_keeps_multiline_content_and_strips_quotes() -> None:
    found = final_in_text('FINAL("line one\nline two")')
    assert found is not None and found.text == "line one\nline two"
