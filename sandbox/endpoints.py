"""Together's dedicated endpoints and hardware, as the sandbox plays them.

`/v1/endpoints` lists the organisation's endpoints (`?type=dedicated` filters), creates one
(`model`, `hardware`, `autoscaling`), reads, updates and deletes one; `/v1/hardware` and
`/v2/public/inference-instance-types` are the public hardware lists. Endpoints are created
STARTED at once: the sandbox has no replicas to wait for. Shapes from Together's API
reference (DedicatedEndpoint, ListEndpoint) and the together SDK's types.
"""

from __future__ import annotations

import secrets
from typing import Any

from .http import ApiError, Request, Response, json_response
from .state import SandboxState

HARDWARE = (
    ("1x_nvidia_h100_80gb_sxm", "NVIDIA H100 80GB SXM", 1, 80, 3.36),
    ("2x_nvidia_h100_80gb_sxm", "NVIDIA H100 80GB SXM", 2, 80, 6.72),
    ("1x_nvidia_a100_80gb_pci", "NVIDIA A100 80GB PCIe", 1, 80, 2.40),
)
_UPDATABLE = ("display_name", "state", "autoscaling", "inactive_timeout")


def _hardware_entry(hw_id: str, gpu: str, count: int, memory: int, hourly: float) -> dict:
    return {
        "object": "hardware",
        "id": hw_id,
        "pricing": {"cents_per_minute": round(hourly * 100 / 60, 2)},
        "specs": {"gpu_type": gpu, "gpu_link": "sxm", "gpu_memory": memory, "gpu_count": count},
        "availability": {"status": "available"},
        "updated_at": "2026-01-01T00:00:00Z",
    }


def hardware_list(state: SandboxState, request: Request, _: str) -> Response:
    return json_response({"object": "list", "data": [_hardware_entry(*h) for h in HARDWARE]})


def instance_types(state: SandboxState, request: Request, _: str) -> Response:
    """The together SDK 3.x's `endpoints.hardware.list()`: InferenceInstanceType's fields."""
    return json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": hw_id,
                    "name": name,
                    "description": f"{count}x {name}",
                    "gpuCount": count,
                    "gpuMemoryGib": memory,
                    "gpuType": name.split()[1],
                    "priceCentsPerHour": round(dollars * 100),
                    "regions": [{"name": "us-central-1"}],
                }
                for hw_id, name, count, memory, dollars in HARDWARE
            ],
        }
    )


def endpoints_list(state: SandboxState, request: Request, _: str) -> Response:
    wanted = (request.query.get("type") or [""])[0]
    data = [e for e in state.endpoints.values() if not wanted or e["type"] == wanted]
    return json_response({"object": "list", "data": data})


def endpoint_create(state: SandboxState, request: Request, _: str) -> Response:
    body = request.json_object()
    model, hardware = body.get("model"), body.get("hardware")
    if not isinstance(model, str) or not model or not isinstance(hardware, str):
        raise ApiError(400, "'model' and 'hardware' are required.")
    if hardware not in {h[0] for h in HARDWARE}:
        raise ApiError(400, f"Unknown hardware '{hardware}'.")
    endpoint_id = "endpoint-" + secrets.token_hex(12)
    endpoint = {
        "object": "endpoint",
        "id": endpoint_id,
        "name": f"sandbox/{model.split('/')[-1]}-{endpoint_id[-6:]}",
        "display_name": str(body.get("display_name") or model),
        "model": model,
        "hardware": hardware,
        "type": "dedicated",
        "owner": "sandbox",
        "state": "STOPPED" if body.get("state") == "STOPPED" else "STARTED",
        "autoscaling": body.get("autoscaling") or {"min_replicas": 1, "max_replicas": 1},
        "created_at": "2026-01-01T00:00:00Z",
    }
    state.endpoints[endpoint_id] = endpoint
    return json_response(endpoint)


def _endpoint(state: SandboxState, endpoint_id: str) -> dict[str, Any]:
    endpoint = state.endpoints.get(endpoint_id)
    if endpoint is None:
        raise ApiError(404, f"Endpoint '{endpoint_id}' not found.", code="not_found")
    return endpoint


def endpoint_retrieve(state: SandboxState, request: Request, endpoint_id: str) -> Response:
    return json_response(_endpoint(state, endpoint_id))


def endpoint_update(state: SandboxState, request: Request, endpoint_id: str) -> Response:
    endpoint = _endpoint(state, endpoint_id)
    body = request.json_object()
    endpoint.update({name: body[name] for name in _UPDATABLE if name in body})
    return json_response(endpoint)


def endpoint_delete(state: SandboxState, request: Request, endpoint_id: str) -> Response:
    _endpoint(state, endpoint_id)
    del state.endpoints[endpoint_id]
    return Response(204, b"")


ROUTES = (
    ("GET", r"/v1/hardware", hardware_list),
    ("GET", r"/v2/public/inference-instance-types", instance_types),
    ("GET", r"/v1/endpoints", endpoints_list),
    ("POST", r"/v1/endpoints", endpoint_create),
    ("GET", r"/v1/endpoints/([^/]+)", endpoint_retrieve),
    ("PATCH", r"/v1/endpoints/([^/]+)", endpoint_update),
    ("DELETE", r"/v1/endpoints/([^/]+)", endpoint_delete),
    # The together SDK 3.x's project-scoped spelling of the same.
    ("GET", r"/v2/projects/[^/]+/endpoints", endpoints_list),
    ("POST", r"/v2/projects/[^/]+/endpoints", endpoint_create),
    ("GET", r"/v2/projects/[^/]+/endpoints/([^/]+)", endpoint_retrieve),
    ("PATCH", r"/v2/projects/[^/]+/endpoints/([^/]+)", endpoint_update),
    ("DELETE", r"/v2/projects/[^/]+/endpoints/([^/]+)", endpoint_delete),
)
