"""{{name}}: a huddle alert sink (world `alert-sink` of huddle:plugin@0.2.0).

POSTs each batch of alerts as one JSON document to a URL:
`{"alerts": [{"source", "count", "interaction", "actor", "type", "content",
"timestamp"}]}`.

Settings (beside `plugin` and `allow` in its `[[alerts.sinks]]` table):
- `url` (required): where to POST; it must be on the sink's `allow` list.
"""

import json
from typing import List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.sink import DeliveryError_Permanent, DeliveryError_Transient
from wit_world.imports import host_log, http
from wit_world.imports.types import Alert, Level

PLUGIN = "{{name}}"

# The host calls configure() once per instance, before any deliver().
_url: Optional[str] = None


def _request_body(alerts: List[Alert]) -> bytes:
    return json.dumps(
        {
            "alerts": [
                {
                    "source": alert.source,
                    "count": alert.count,
                    "interaction": alert.event.interaction,
                    "actor": alert.event.actor,
                    "type": alert.event.type,
                    "content": alert.event.content,
                    "timestamp": alert.event.timestamp,
                }
                for alert in alerts
            ]
        }
    ).encode()


def _check_status(url: str, status: int) -> None:
    """2xx is delivered; 408, 429 and 5xx may pass later (retried with
    backoff); any other answer will not change by retrying the same request."""
    reason = f"{PLUGIN}: {url} answered HTTP {status}"
    if 200 <= status <= 299:
        return
    if status in (408, 429) or 500 <= status <= 599:
        raise Err(DeliveryError_Transient(reason))
    raise Err(DeliveryError_Permanent(reason))


def _failure(error: http.HttpError):
    """The host's refusals (allowlist, headers, the per-call request limit)
    are configuration mistakes: retrying cannot help. A timeout or a failed
    connection may pass later."""
    if isinstance(error, http.HttpError_NotAllowed):
        return DeliveryError_Permanent(f"{PLUGIN}: not allowed: {error.value}")
    if isinstance(error, http.HttpError_HeaderNotAllowed):
        return DeliveryError_Permanent(f"{PLUGIN}: request header not allowed: {error.value}")
    if isinstance(error, http.HttpError_TooManyRequests):
        return DeliveryError_Permanent(f"{PLUGIN}: too many requests in one call")
    if isinstance(error, (http.HttpError_Timeout, http.HttpError_ConnectionFailed)):
        return DeliveryError_Transient(f"{PLUGIN}: {error.value}")
    return DeliveryError_Transient(f"{PLUGIN}: {error}")


class Sink(exports.Sink):
    def configure(self, settings: List[Tuple[str, str]]) -> None:
        global _url
        for key, value in settings:
            if key == "url":
                if not value.startswith(("http://", "https://")):
                    raise Err(f"{PLUGIN}: `url` must be an http:// or https:// URL, not {value!r}")
                _url = value
            else:
                # Refusing unknown keys turns a typo in huddle.toml into a clear error.
                raise Err(f"{PLUGIN}: unknown setting `{key}`")
        if _url is None:
            raise Err(f"{PLUGIN}: the `url` setting is required")

    def deliver(self, alerts: List[Alert]) -> None:
        if _url is None:
            raise Err(DeliveryError_Permanent(f"{PLUGIN}: deliver called before configure"))
        try:
            response = http.post(_url, "application/json", [], _request_body(alerts))
        except Err as error:
            if isinstance(error.value, http.HttpError_ResponseTooLarge):
                # The body was cut at the host's limit; the status still tells.
                response = error.value.value
            else:
                failure = _failure(error.value)
                host_log.log(Level.WARN, failure.value)
                raise Err(failure)
        _check_status(_url, response.status)
        host_log.log(Level.DEBUG, f"{PLUGIN}: delivered {len(alerts)} alert(s) to {_url}")
