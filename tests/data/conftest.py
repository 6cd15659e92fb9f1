"""Nothing under tests/data is a test: fixtures only (keeps `pytest --nbval tests` off them)."""

collect_ignore_glob = ["*"]
