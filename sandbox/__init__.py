"""The sandbox upstream: a simulated Together AI for tests, demos and benchmarks."""

from .app import SandboxApp
from .config import KINDS, DynamicLimits, KindLimits, SandboxConfig
from .server import SandboxServer, ThreadedSandbox, run_in_thread, serve_in_background
from .state import SandboxState

__all__ = [
    "KINDS",
    "DynamicLimits",
    "KindLimits",
    "SandboxApp",
    "SandboxConfig",
    "SandboxServer",
    "SandboxState",
    "ThreadedSandbox",
    "run_in_thread",
    "serve_in_background",
]
