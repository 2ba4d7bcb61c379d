"""Test-only helpers shared by every test suite: fixtures, a signed client, a scripted OIDC browser.

Lives outside ``services/`` on purpose: nothing here is packaged into the wheel or copied into an
image (see the Dockerfiles and ``.dockerignore``), so production code can never import pytest or a
test helper by accident. ``tests/packaging`` checks that no service package imports ``testkit``.
"""
