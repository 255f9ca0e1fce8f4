"""A real ComfyUI server for tests: subprocess on 127.0.0.1, --cpu, its own base directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "act-steering"
PACK_FILES = ["__init__.py", "nodes", "act_core", "workflows", "pyproject.toml", "requirements.txt"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_pack(custom_nodes: Path) -> Path:
    """Copy the node pack as a user's ``custom_nodes/act-steering`` clone would hold it."""
    dest = custom_nodes / PACK_NAME
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACK_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


class ComfyServer:
    def __init__(self, comfy_dir: Path, base: Path, pythonpath=()):
        self.comfy_dir, self.base = Path(comfy_dir).resolve(), Path(base).resolve()
        self.pythonpath = [str(p) for p in pythonpath]  # first on the server's path (an older version's frontend)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.proc = None

    def start(self, timeout: float = 180.0, extra_args=()) -> "ComfyServer":
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([*self.pythonpath, str(ROOT / "tools" / "comfy_shim")]),
                   PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, str(self.comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", "sqlite:///:memory:", *extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(self.base), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP ----------------------------------------------------------------------------------

    def request(self, path: str, data=None, timeout: float = 30):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, timeout: float = 30):
        return self.request(path, None, timeout)

    def websocket(self, client_id: str, timeout: float = 30):
        """A websocket-client connection receiving this client's progress/executing messages."""
        import websocket

        return websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)

    def post_prompt(self, prompt: dict, workflow: dict = None, client_id: str = None) -> dict:
        payload = {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())}
        if workflow is not None:
            payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        try:
            return self.request("/prompt", payload)
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, **json.loads(e.read() or b"{}")}

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.get(f"/history/{prompt_id}")
            entry = h.get(prompt_id)
            if entry and (entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error"):
                return entry
            if entry and any(m[0] == "execution_interrupted" for m in entry.get("status", {}).get("messages", [])):
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 300, workflow: dict = None) -> dict:
        r = self.post_prompt(prompt, workflow)
        if "prompt_id" not in r:
            raise AssertionError(f"POST /prompt refused: {json.dumps(r)[:3000]}")
        return self.wait(r["prompt_id"], timeout)

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    def queue_running(self) -> bool:
        q = self.get("/queue")
        return bool(q.get("queue_running"))


def messages(entry: dict):
    return [m[0] for m in entry.get("status", {}).get("messages", [])]
