"""A headless ComfyUI server for end-to-end tests, with this pack loaded as users load it.

The pack is copied into a custom_nodes folder under another name and registered through
--extra-model-paths-config, with its own loras/checkpoints/input/output folders.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

IMPORT_FAILURES = ("Cannot import", "IMPORT FAILED", "Error while calling comfy_entrypoint",
                   "did not return a ComfyExtension")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui: Path, pack_root: Path, base: Path, extra_args: tuple[str, ...] = (),
                 test_nodes: Path | None = None):
        """`test_nodes`: a test-only custom node folder, installed beside the pack (tiny models the loaders cannot
        make); it imports the helpers in tests/comfy."""
        self.base = base
        self.pack_dir = base / "custom_nodes" / "emplace-under-test"
        self.pack_module = self.pack_dir.name  # what ComfyUI names the pack's workflow templates by
        shutil.copytree(pack_root, self.pack_dir, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", "runs", "out"))
        if test_nodes is not None:
            shutil.copytree(test_nodes, base / "custom_nodes" / test_nodes.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("loras", "checkpoints", "location_models", "input", "output", "temp", "user"):
            (base / name).mkdir(parents=True, exist_ok=True)
        config = base / "extra_model_paths.yaml"
        config.write_text(f"emplace_test:\n    base_path: {base}\n    custom_nodes: custom_nodes/\n"
                          "    loras: loras/\n    checkpoints: checkpoints/\n    location_models: location_models/\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(comfyui / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--extra-model-paths-config", str(config), "--disable-auto-launch",
             "--input-directory", str(base / "input"), "--output-directory", str(base / "output"),
             "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"),
             "--database-url", "sqlite:///:memory:", *extra_args],
            cwd=comfyui, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "EMPLACE_TEST_HELPERS": str(Path(__file__).resolve().parent)})

    # -- life cycle ----------------------------------------------------------------------
    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.get_json("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def import_failures(self) -> list[str]:
        """Log lines where ComfyUI failed to import this pack (other packs' failures are not ours)."""
        return [line for line in self.log().splitlines()
                if self.pack_dir.name in line and any(f in line for f in IMPORT_FAILURES)]

    # -- HTTP ------------------------------------------------------------------------------
    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return r.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # /prompt answers 400 with the validation errors
            raise AssertionError(f"POST {path} -> {e.code}: {e.read().decode()}") from None

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue an API-format prompt, wait on the websocket until it finishes, return its history."""
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            prompt_id = self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
            deadline = time.time() + timeout
            while time.time() < deadline:
                message = ws.recv()
                if not isinstance(message, str):
                    continue  # binary preview frames
                event = json.loads(message)
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                if event["type"] == "execution_error":
                    raise AssertionError(f"{data.get('node_type')}: {data.get('exception_message')}")
                if event["type"] == "execution_success" or (event["type"] == "executing" and data.get("node") is None):
                    break
        finally:
            ws.close()
        for _ in range(100):  # the history entry lands just after the last websocket event
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} finished but has no history:\n{self.log()[-3000:]}")

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self.get(f"/view?{query}")
