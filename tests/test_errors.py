from __future__ import annotations

import inspect

import bastion.errors as errors


def test_every_error_derives_from_bastion_error_and_is_drawn_in_the_docstring() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    assert {c.__name__ for c in classes} == {n for n in errors.__all__ if n[0].isupper()}
    for cls in classes:
        assert issubclass(cls, errors.BastionError)
        assert cls.__name__ in (errors.__doc__ or "")


def test_bad_values_are_also_value_errors() -> None:
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.InputError, ValueError)
    assert not issubclass(errors.ModelError, ValueError)


def test_brief_keeps_the_last_line_of_a_long_message() -> None:
    exc = RuntimeError("Traceback of TorchScript:\n  File x, line 1\nRuntimeError: shapes differ\n")
    assert errors.brief(exc) == "RuntimeError: shapes differ"
    assert len(errors.brief(ValueError("x" * 1000))) == 300
