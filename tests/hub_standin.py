"""A small stand-in for the Hub's HTTP API on 127.0.0.1, for push tests (no public Hub here).

It answers the calls ``huggingface_hub.HfApi`` makes to create a repo and a branch, list a
repo's files, check a README's metadata and commit: ``POST /api/repos/create``,
``POST /api/validate-yaml``, ``POST /api/models/{repo}/branch/{b}``,
``GET /api/models/{repo}/tree/{rev}``, ``POST /api/models/{repo}/preupload/{rev}`` and
``POST /api/models/{repo}/commit/{rev}`` (NDJSON). Every file is accepted as a "regular" upload,
so file contents travel inside the commit; the large-file (LFS / Xet) transport is not
imitated. ``fail`` names endpoints that answer 500 (``"create"``, ``"branch"``, ``"tree"``,
``"preupload"``, ``"commit"``, or ``"*"`` for all), to test failures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

NAMESPACE = "someone"  # the user every token belongs to
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$|^[A-Za-z0-9][\w.-]*$")


def metadata_errors(readme: str) -> list[str]:
    """What the Hub's README metadata check would object to, for the fields coati_hf writes:
    a YAML mapping; ``base_model`` a repo id (not a path); ``model-index`` results with a task
    type, a dataset name and type, and metrics with a type and a value."""
    match = re.match(r"^---\n(.*?)\n---\n", readme, re.DOTALL)
    if not match:
        return ["README.md has no YAML metadata block"]
    data = yaml.safe_load(match.group(1))
    if not isinstance(data, dict):
        return ["metadata is not a mapping"]
    errors = []
    bases = data.get("base_model") or []
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str) or not _REPO_ID.match(base):
            errors.append(f"base_model {base!r} is not a repo id")
    for entry in data.get("model-index") or []:
        for result in entry.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append("model-index result without task.type")
            dataset = result.get("dataset") or {}
            if not dataset.get("name") or not dataset.get("type"):
                errors.append("model-index result without dataset name and type")
            for metric in result.get("metrics") or []:
                if "type" not in metric or "value" not in metric:
                    errors.append("model-index metric without type and value")
    return errors


@dataclass
class Repo:
    visibility: str | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}})
    commits: list[dict] = field(default_factory=list)


class HubStandIn:
    """``with HubStandIn() as hub: HfApi(endpoint=hub.endpoint)...``; ``hub.repos`` holds what arrived."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.repos: dict[str, Repo] = {}
        self.requests: list[dict] = []
        self.fail = set(fail)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _route(self, method: str) -> None:
                path = urlparse(self.path).path
                body = self._body() if method == "POST" else b""
                parts = [unquote(part) for part in path.strip("/").split("/")]
                hub.requests.append({"method": method, "path": path, "authorization": self.headers.get("authorization")})
                kind = parts[4] if parts[:2] == ["api", "models"] and len(parts) > 4 else parts[-1]
                if kind in hub.fail or "*" in hub.fail:
                    return self._reply(500, {"error": f"stand-in failure on {kind}"})
                with hub._lock:
                    if method == "POST" and parts[:3] == ["api", "repos", "create"]:
                        return self._create_repo(json.loads(body))
                    if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
                        errors = metadata_errors(json.loads(body)["content"])
                        return self._reply(400, {"error": "; ".join(errors)}) if errors else self._reply(200, {"warnings": []})
                    if parts[:2] != ["api", "models"] or len(parts) < 5:
                        return self._reply(404, {"error": f"no route {method} {path}"})
                    repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:]) or "main"
                    repo = hub.repos.get(repo_id)
                    if repo is None:
                        return self._reply(404, {"error": f"Repository {repo_id} not found"})
                    if method == "POST" and action == "branch":
                        if revision in repo.branches:
                            return self._reply(409, {"error": "Reference already exists"})
                        repo.branches[revision] = dict(repo.branches["main"])
                        return self._reply(200, {})
                    if revision not in repo.branches:
                        return self._reply(404, {"error": f"Revision {revision} not found"})
                    files = repo.branches[revision]
                    if method == "GET" and action == "tree":
                        listing = [
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in sorted(files.items())
                        ]
                        return self._reply(200, listing)
                    if method == "POST" and action == "preupload":
                        names = [item["path"] for item in json.loads(body)["files"]]
                        return self._reply(200, {"files": [{"path": n, "uploadMode": "regular", "shouldIgnore": False} for n in names]})
                    if method == "POST" and action == "commit":
                        return self._commit(repo_id, repo, revision, body)
                return self._reply(404, {"error": f"no route {method} {path}"})

            def _create_repo(self, payload: dict) -> None:
                repo_id = f"{payload.get('organization') or NAMESPACE}/{payload['name']}"
                url = f"{hub.endpoint}/{repo_id}"
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": url})
                hub.repos[repo_id] = Repo(visibility=payload.get("visibility"))
                return self._reply(200, {"url": url, "name": repo_id})

            def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes) -> None:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = repo.branches[revision]
                added, deleted = [], []
                for line in lines:
                    if line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        added.append(line["value"]["path"])
                    elif line["key"] == "deletedFile":
                        files.pop(line["value"]["path"], None)
                        deleted.append(line["value"]["path"])
                    elif line["key"] != "header":
                        return self._reply(400, {"error": f"the stand-in does not take {line['key']}"})
                oid = hashlib.sha1(body).hexdigest()
                repo.commits.append({"revision": revision, "summary": header["summary"], "added": added, "deleted": deleted})
                return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler
