import inspect

import rlm_jobs
from rlm_jobs import errors


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(rlm_jobs).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(rlm_jobs.__all__)


def test_every_error_type_is_exported() -> None:
    error_types = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.RLMJobsError)
    }
    assert error_types <= set(rlm_jobs.__all__)


def test_reference_style_import_works() -> None:
    from rlm_jobs import RLM

    assert "root_prompt" in inspect.signature(RLM.completion).parameters
