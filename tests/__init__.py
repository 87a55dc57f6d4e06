"""kuprobe's tests: a package, so each test folder can import the helpers of another
(tests/vm uses tests/live/helpers.py) under one name, in pytest and in mypy alike."""
