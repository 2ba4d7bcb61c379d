"""The declarative route table: load it from YAML, validate it, and match requests against it.

Matching is on path *segments* of the decoded path, so a template variable can never swallow a
``/``; literal segments win over variables (``/timesheets/upload`` before ``/timesheets/{id}``).
Raw paths with dot-segments or encoded slashes are refused before matching (see :func:`unsafe_path`)
so the path the gateway authorizes is the path the service routes.

Each route has a body limit of its own (``max_body_bytes``, else :data:`ROUTE_BODY_BYTES`, and never
above the gateway's ``MAX_BODY_BYTES``): the gateway holds a request's body whole in memory before
forwarding it (its digest is signed), so the upload's 16 MiB must not be what any authenticated caller
can make it hold on every route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml
from svckit.app import DEFAULT_MAX_BODY

#: a route's body limit unless it states its own: what the services take outside uploads (the kit's)
ROUTE_BODY_BYTES = DEFAULT_MAX_BODY
API_PREFIX = "/api"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_VARIABLE = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~-]+$")
# encoded "/" or "\\", a backslash, an encoded NUL, an empty segment, or a "." / ".." segment (raw or encoded)
_UNSAFE_RAW = re.compile(r"%2[fF]|%5[cC]|\\|%00|//|(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)")


class RouteTableError(ValueError):
    """The route file does not describe a valid table; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    upstream: str
    scopes: frozenset[str]
    require: Literal["all", "any"]
    segments: tuple[str | None, ...]  # None marks a variable segment
    dpop_required: bool = False  # `dpop: required`: only DPoP-bound tokens, with their proof
    max_body_bytes: int = ROUTE_BODY_BYTES  # `max_body_bytes`: the largest body it takes

    def allows(self, granted: frozenset[str]) -> bool:
        if not self.scopes:
            return True
        if self.require == "all":
            return self.scopes <= granted
        return not self.scopes.isdisjoint(granted)

    @property
    def scope_text(self) -> str:
        return " ".join(sorted(self.scopes))


@dataclass(frozen=True, slots=True)
class Match:
    route: Route | None
    allowed_methods: tuple[str, ...]


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


def unsafe_path(raw_path: str) -> bool:
    """Encoded separators, NULs, empty or dot segments: ambiguous between proxy and service."""
    if "%" not in raw_path and "\\" not in raw_path and "//" not in raw_path and "." not in raw_path:
        return False  # none of what the pattern looks for (most paths): four C scans, no regex
    return _UNSAFE_RAW.search(raw_path) is not None


class RouteTable:
    def __init__(self, routes: list[Route], upstreams: frozenset[str]) -> None:
        self.routes = routes
        self.upstreams = upstreams
        # HEAD goes wherever GET goes (RFC 9110 §9.3.2), with the same scopes, unless declared itself
        declared = {(route.method, route.template) for route in routes}
        implicit_head = [
            replace(route, method="HEAD")
            for route in routes
            if route.method == "GET" and ("HEAD", route.template) not in declared
        ]
        routes = [*routes, *implicit_head]
        by_length: dict[int, list[Route]] = {}
        for route in sorted(routes, key=lambda r: tuple(seg is None for seg in r.segments)):
            by_length.setdefault(len(route.segments), []).append(route)
        self._by_length = by_length
        self._exact: dict[tuple[str, str], Match] = {  # answers prepared once for fixed paths
            (route.method, route.template): Match(route, ()) for route in routes if None not in route.segments
        }

    def match(self, method: str, path: str) -> Match:
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact
        # every segment of the raw path, a trailing empty one included: "/api/timesheets/" is not
        # "/api/timesheets" (the service would answer it with a redirect to its own URL)
        segments = tuple(path[1:].split("/")) if path.startswith("/") else _segments(path)
        candidates = self._by_length.get(len(segments), ())
        allowed: list[str] = []
        matched_template: str | None = None
        for route in candidates:
            if matched_template is not None and route.template != matched_template:
                continue
            if all(want is None or want == got for want, got in zip(route.segments, segments, strict=True)):
                if any(got == "" for got in segments):
                    continue
                if route.method == method:
                    return Match(route, ())
                matched_template = route.template
                allowed.append(route.method)
        return Match(None, tuple(sorted(set(allowed))))

    def methods_for(self, path: str) -> tuple[str, ...]:
        """Every method some route accepts at this path (for CORS preflights)."""
        found = self.match("\0", path)
        return found.allowed_methods


def parse_route(entry: object, index: int, upstreams: frozenset[str]) -> Route:
    where = f"route #{index + 1}"
    if not isinstance(entry, dict):
        raise RouteTableError(f"{where}: must be a mapping")
    method = str(entry.get("method", "")).upper()
    template = entry.get("path")
    upstream = entry.get("upstream")
    scopes = entry.get("scopes", [])
    require = entry.get("require", "all")
    dpop = entry.get("dpop", "allowed")
    max_body = entry.get("max_body_bytes", ROUTE_BODY_BYTES)
    if method not in METHODS:
        raise RouteTableError(f"{where}: method {method!r} is not one of {sorted(METHODS)}")
    if not isinstance(template, str) or not template.startswith(API_PREFIX + "/"):
        raise RouteTableError(f"{where}: path must be a string starting with {API_PREFIX}/")
    segments: list[str | None] = []
    for part in _segments(template):
        if _VARIABLE.match(part):
            segments.append(None)
        elif _LITERAL.match(part):
            segments.append(part)
        else:
            raise RouteTableError(f"{where}: path segment {part!r} is neither literal nor {{variable}}")
    if upstream not in upstreams:
        raise RouteTableError(f"{where}: upstream {upstream!r} is not one of {sorted(upstreams)}")
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes):
        raise RouteTableError(f"{where}: scopes must be a list of scope names")
    if require not in ("all", "any"):
        raise RouteTableError(f"{where}: require must be 'all' or 'any'")
    if dpop not in ("allowed", "required"):
        raise RouteTableError(f"{where}: dpop must be 'allowed' or 'required'")
    if type(max_body) is not int or max_body < 0:
        raise RouteTableError(f"{where}: max_body_bytes must be a whole number of bytes")
    return Route(
        method,
        template,
        str(upstream),
        frozenset(scopes),
        require,
        tuple(segments),
        dpop == "required",
        max_body,
    )


def load_routes(path: Path, upstreams: frozenset[str]) -> RouteTable:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RouteTableError(f"cannot read route table {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RouteTableError(f"route table {path} is not valid YAML: {exc}") from None
    entries = document.get("routes") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RouteTableError(f"route table {path} needs a non-empty 'routes' list")
    routes = [parse_route(entry, index, upstreams) for index, entry in enumerate(entries)]
    seen: set[tuple[str, tuple[str | None, ...]]] = set()
    for route in routes:
        key = (route.method, route.segments)
        if key in seen:
            raise RouteTableError(f"duplicate route {route.method} {route.template}")
        seen.add(key)
    return RouteTable(routes, upstreams)
