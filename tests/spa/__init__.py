"""The SPA's own checks (types, formatting, unit tests): Node only, no platform, no browser."""
