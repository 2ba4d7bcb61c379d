"""Root conftest: every test gets the shared kit's fixtures (own database, own Redis prefix, keys)."""

pytest_plugins = ["testkit.fixtures"]
