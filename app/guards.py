"""What the server refuses before it does any work for a request, and the headers every answer carries.

A server on 127.0.0.1 is still reachable from any web page the user opens: a page can POST to it
(a `text/plain` POST needs no CORS preflight) and, by DNS rebinding, read from it under its own
name. So (docs/protocol.md, "Who may connect"):

- Host: only loopback names and addresses (`localhost`, `*.localhost`, 127.0.0.0/8, ::1), the
  bound address (any IP literal when bound to 0.0.0.0 or ::, since a rebinding attack needs a name)
  and the names given with `--allow-host` are served; any other Host gets 403.
- Cross-site: a browser request whose `Sec-Fetch-Site` is `cross-site` or `same-site` (another
  port or subdomain) is refused with 403, navigations to the page excepted. State-changing routes
  (/offer, /api/upload, /ws, /api/sessions/<id>/close) also need an `Origin`, when one is sent,
  naming this server's Host, and /offer a `Content-Type: application/json`, which no page can send
  cross-origin without a preflight this server never answers. The close route takes the beacon's
  text/plain, so it also needs the session's own close token (app.server).
- Headers: `nosniff`, a CSP that allows only this origin and no framing, no referrer, resources
  for this origin only, and a `Server` header without versions.

`check_offer_sdp` refuses an offer aiortc would accept but could never connect (no DTLS
fingerprint, no ICE credentials), before any peer connection is made.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from app.config import ServerConfig

SERVER_HEADER = "roam"
# The page is one module script, one stylesheet, images from this server (and the data: favicon);
# frames arrive over WebRTC (a MediaStream, no URL) or this server's websocket.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Sec-Fetch-Site values of requests this server's own page makes (or a user typing the URL).
OWN_FETCH_SITES = ("same-origin", "none")
# Routes that start work or change state: Origin must match and Sec-Fetch-Site must be our own.
STATE_CHANGING = ("/offer", "/api/upload", "/ws")
# Per-session routes (POST /api/sessions/<id>/close) are state-changing too.
SESSION_ROUTES = "/api/sessions/"


def hostname_of(host_header: str) -> str | None:
    """The lower-case name or address of a Host header (no port, no brackets, no trailing dot), or
    None if it does not parse."""
    try:
        name = urlsplit(f"//{host_header}").hostname
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip(".") if name != "." else None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(name: str, config: ServerConfig) -> bool:
    """Whether a request for Host `name` (see `hostname_of`) is served (module docstring)."""
    if name == "localhost" or name.endswith(".localhost") or name in config.allowed_hosts:
        return True
    address = _ip(name)
    # The bind address is a bare name or address (an IPv6 one unbracketed), not a Host header.
    bound = config.host.strip("[]").lower()
    if address is None:
        return name == bound.lower()
    if address.is_loopback:
        return True
    bound_address = _ip(bound)
    if bound_address is not None and bound_address.is_unspecified:
        return True
    return bound_address is not None and address == bound_address


def origin_matches(request: web.Request) -> bool:
    """True if the request carries no Origin, or one naming this server's Host (`Origin: null`,
    sent by sandboxed and file: pages, never matches)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


def cross_site_reason(request: web.Request) -> str | None:
    """Why a browser request from another site is refused, or None if it is not one (see the
    module docstring)."""
    site = request.headers.get("Sec-Fetch-Site")
    navigation = request.method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
    if site is not None and site not in OWN_FETCH_SITES and not navigation:
        return f"cross-site request refused (Sec-Fetch-Site: {site[:40]})"
    state_changing = request.path in STATE_CHANGING or request.path.startswith(SESSION_ROUTES)
    if state_changing and not origin_matches(request):
        return f"Origin {request.headers['Origin'][:100]!r} does not match host {request.host[:100]!r}"
    return None


def guard_middleware(config: ServerConfig, stats: dict[str, int]) -> Callable:
    """The aiohttp middleware that applies the Host and cross-site rules to every route, counting
    refusals in `stats["rejected_host"]` and `stats["rejected_cross_site"]`."""

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host = request.headers.get("Host")
        # HTTP/1.1 requires Host; a request without one cannot come from a browser, so it cannot be
        # a rebinding attack.
        if host is not None:
            name = hostname_of(host)
            if name is None or not host_allowed(name, config):
                stats["rejected_host"] += 1
                return web.json_response(
                    {"error": f"host {host[:100]!r} is not served here; serve with --allow-host NAME to allow a public name"}, status=403
                )
        reason = cross_site_reason(request)
        if reason is not None:
            stats["rejected_cross_site"] += 1
            return web.json_response({"error": reason}, status=403)
        return await handler(request)

    return guard


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: the headers of the module docstring on every response."""
    response.headers["Server"] = SERVER_HEADER
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def check_offer_sdp(sdp: str) -> None:
    """ValueError naming what an offer's SDP lacks to ever connect: every media section needs ICE
    credentials and a DTLS fingerprint (at session or media level), audio/video need rtcp-mux, and
    one video section must let the page receive."""
    from aiortc import sdp as aiortc_sdp

    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    # The parser meets a stranger's text: any error in it means the same, not SDP it can read.
    except Exception as error:
        raise ValueError(f"the SDP does not parse ({type(error).__name__}: {str(error)[:100]})") from None
    if not description.media:
        raise ValueError("the SDP has no media sections")
    for index, media in enumerate(description.media):
        where = f"media section {index} ({media.kind})"
        if not media.ice.usernameFragment or not media.ice.password:
            raise ValueError(f"{where} has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
        if media.dtls is None or not media.dtls.fingerprints:
            raise ValueError(f"{where} has no DTLS fingerprint (a=fingerprint)")
        if media.kind in ("audio", "video") and not media.rtcp_mux:
            raise ValueError(f"{where} does not use rtcp-mux")
    if not any(m.kind == "video" and m.direction in (None, "sendrecv", "recvonly") for m in description.media):
        raise ValueError("the offer has no video section the page receives on (recvonly or sendrecv)")
