"""Browser end-to-end tests (headless Chromium against the platform as `make dev` runs it)."""
