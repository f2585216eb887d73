"""Optional peers measured against the same upstream: LiteLLM's proxy (`--peer litellm --litellm-venv DIR`).

LiteLLM is not a dependency of this project: it runs from its own virtualenv (`pip install
'litellm[proxy]==1.108.7'` there), offline, with the model cost map read from its package and a
master key the load generator presents.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench import loadgen, procs

LITELLM_VERSION = "1.108.7"
MASTER_KEY = "sk-bench-master"
MODEL = "bench/model"


def litellm_config(upstream_port: int) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/api/v1\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )


def start_litellm(venv: str, upstream: procs.Service, cpus: set[int] | None = None) -> procs.Service:
    executable = Path(venv) / "bin" / "litellm"
    if not executable.exists():
        raise RuntimeError(f"{executable} not found: install 'litellm[proxy]=={LITELLM_VERSION}' into {venv}")
    config = Path(tempfile.mkdtemp(prefix="bench-litellm-")) / "config.yaml"
    config.write_text(litellm_config(upstream.port))
    port = procs.free_port()
    env = {
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch of the cost map at start
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
        "LITELLM_TELEMETRY": "False",
    }
    args = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    return procs.start("litellm", args, port, env, cpus, startup_timeout=120)


def litellm_target(port: int) -> loadgen.Target:
    return loadgen.openai_target("litellm", port, "/v1/chat/completions", MODEL, MASTER_KEY)
