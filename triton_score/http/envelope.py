"""What every request and every answer goes through, whichever code serves it.

On the way in (:meth:`Envelope.open`), in this order:

1. the request's :class:`~triton_score.http.exchange.Exchange` starts its clock and becomes
   the current one (log lines carry its ids from here on);
2. with API keys on, ``Authorization`` is taken out of the environ (nothing downstream ever
   sees it), then its request ids are taken (:mod:`triton_score.http.request_ids`: a 431 for
   a bad one); on the separate health port, anything but a probe is a 404
   (:mod:`triton_score.http.health_port`); then the key is checked
   (:mod:`triton_score.http.auth`: a 401, or the 200 of a CORS preflight).

On the way out (:meth:`Envelope.close`): the request-id headers, the CORS headers
(:mod:`triton_score.http.cors`, with ``AML_CORS_ORIGINS``), ``x-ms-server-version``
(:mod:`triton_score.http.server_version`), then the access line
(:mod:`triton_score.http.access`) with the final status.

The Flask app runs it as its first ``before_request`` and last ``after_request`` hooks
(:func:`triton_score.http.app.create_app`); the ``/score`` routes served without Flask's
request cycle (:mod:`triton_score.http.score_wsgi`) call the same two methods. So each of
these behaviours is written once, here or in the module named, for every route.
"""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import Headers

from triton_score.codecs.response import Encoded, encode_error
from triton_score.errors import ScoringError
from triton_score.http.access import log_exchange
from triton_score.http.auth import ApiKeyAuth
from triton_score.http.cors import Cors
from triton_score.http.exchange import Exchange, request_path
from triton_score.http.health_port import HealthPort
from triton_score.http.request_ids import id_headers, take_ids

#: The answer to a CORS preflight on a route that needs a key (browsers send none on one):
#: what Flask's ``Response(status=200)`` is, so both paths answer it alike.
PREFLIGHT = Encoded(b"", "text/html; charset=utf-8", 200)


class Envelope:
    """Request ids, API keys, CORS, the health port, the server's version and the access
    line, for every request.

    :param auth: the API key check; ``None``: keys are off.
    :param cors: the allowed origins; ``None``: no CORS headers.
    :param health_port: the separate health listener; ``None``: there is none.
    :param server_version: the header pairs every answer carries (none when switched off).
    """

    def __init__(
        self,
        auth: ApiKeyAuth | None = None,
        cors: Cors | None = None,
        *,
        health_port: HealthPort | None = None,
        server_version: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.auth = auth
        self.cors = cors
        self.health_port = health_port
        self.server_version = server_version

    def open(self, environ: dict[str, Any]) -> tuple[Exchange, Encoded | None]:
        """The request's exchange (now the current one; :meth:`Exchange.release` it when
        done), and the answer when the request ends here (a refusal, or a preflight)."""
        exchange = Exchange(environ, request_path(environ))
        exchange.make_current()
        auth = self.auth
        header = auth.take(environ) if auth is not None else None
        try:
            exchange.request_id, exchange.client_request_id = take_ids(environ)
            if self.health_port is not None:
                refused = self.health_port.refusal(environ, exchange.path)
                if refused is not None:
                    raise refused
            if auth is not None and auth.check(environ, exchange.path, header):
                return exchange, PREFLIGHT
        except ScoringError as exc:
            return exchange, encode_error(exc, exchange.request_id)
        return exchange, None

    def close(self, exchange: Exchange, status: int, headers: Headers) -> None:
        """Add the request-id, CORS and server-version headers to the answer's ``headers``;
        write the access line, the answer's ``status`` in it."""
        for name, value in id_headers(exchange.request_id, exchange.client_request_id):
            headers[name] = value
        if self.cors is not None:
            self.cors.apply(exchange.environ, headers)
        for name, value in self.server_version:
            headers[name] = value
        log_exchange(exchange, status)
