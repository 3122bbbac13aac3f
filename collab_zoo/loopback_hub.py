"""A small Hugging Face Hub look-alike on 127.0.0.1, for tests and offline dry runs of a release.

It answers the part of the Hub protocol that ``huggingface_hub`` (every generation the project supports,
0.34 to 2.x) uses to create a repo, commit files, download them and describe a repo. Nothing is mocked on the
client side: point ``HF_ENDPOINT`` at ``server.url`` before importing huggingface_hub and use it as usual.

Routes (all a client of those generations calls for these four jobs; anything else is a 404 recorded in
``unrouted``, so a test can assert that a client generation needed nothing more):

====================================================  ========================================================
``POST /api/repos/create``                            create; 409 with ``{"url"}`` if it exists
``POST /api/validate-yaml``                           model card metadata check (YAML mapping)
``POST /api/models/<repo>/preupload/<rev>``           answers ``"regular"``: file bodies come inline
``POST /api/models/<repo>/commit/<rev>``              NDJSON commit (header, base64 files, deletions)
``GET  /api/models/<repo>[/revision/<rev>]``          model info: sha, siblings, ``xetEnabled: false``
                                                      (0.34/0.35 ask for it before every commit)
``GET  /api/models/<repo>/tree/<rev>[/<path>]``       file listing (``list_repo_files``/``list_repo_tree``)
``HEAD|GET /<repo>/resolve/<rev>/<path>``             download, with ``X-Repo-Commit`` and an ETag
====================================================  ========================================================

Every file is served as the Hub serves LFS files: its ETag is the sha256 of its bytes (the real Hub gives
small non-LFS files their git blob sha1 instead; clients accept both). No Xet and no LFS transfer endpoints:
run clients with ``HF_HUB_DISABLE_XET=1``, as conftest.py does.

    port = free_port()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"   # before huggingface_hub is first imported
    server = LoopbackHub(port=port).start()

huggingface_hub reads ``HF_ENDPOINT`` once, at import, and importing collab_zoo imports it (through timm),
so choose the port first and set the variable before anything imports the zoo.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["LoopbackHub", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (bound and released), for an endpoint that must be known early."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class _Commit:
    oid: str
    files: Dict[str, bytes]
    message: str
    date: str = ""


@dataclass
class _Repo:
    commits: List[_Commit] = field(default_factory=list)
    branches: Dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[_Commit]:
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)


class LoopbackHub:
    """Thread-safe in-memory Hub.

    ``requests`` records (method, path) for tests that count downloads; ``unrouted`` the (method, path) of
    requests no route answered.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._repos: Dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self.requests: List[Tuple[str, str]] = []
        self.unrouted: List[Tuple[str, str]] = []
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackHub":
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state, used by the handler and by tests -------------------------------------------------------------
    def create_repo(self, repo_id: str) -> bool:
        with self._lock:
            if repo_id in self._repos:
                return False
            self._repos[repo_id] = _Repo()
            return True

    def commit(self, repo_id: str, branch: str, files: Dict[str, bytes], deleted: List[str], message: str) -> str:
        with self._lock:
            repo = self._repos[repo_id]
            head = repo.resolve(branch)
            content = dict(head.files) if head else {}
            content.update(files)
            for path in deleted:
                content.pop(path, None)
            seed = f"{repo_id}\n{branch}\n{message}\n{time.time_ns()}\n{len(repo.commits)}".encode()
            oid = hashlib.sha1(seed + b"".join(hashlib.sha256(v).digest() for v in content.values())).hexdigest()
            date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            repo.commits.append(_Commit(oid, content, message, date))
            repo.branches[branch] = oid
            return oid

    def lookup(self, repo_id: str, revision: str, path: str):
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return "RepoNotFound", None, None
            commit = repo.resolve(revision)
            if commit is None:
                return "RevisionNotFound", None, None
            if path not in commit.files:
                return "EntryNotFound", commit.oid, None
            return None, commit.oid, commit.files[path]

    def snapshot(self, repo_id: str, revision: str):
        """(error code or None, commit) of a repo at a revision."""
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                return "RepoNotFound", None
            commit = repo.resolve(revision)
            return (None, commit) if commit is not None else ("RevisionNotFound", None)


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _file_entry(path: str, content: bytes) -> Dict[str, object]:
    """A file as the tree listing describes it (``lfs`` as for an LFS file: see the module docstring)."""
    return {"type": "file", "path": path, "size": len(content), "oid": _git_blob_sha1(content),
            "lfs": {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}}


def _model_info(repo_id: str, commit) -> Dict[str, object]:
    siblings = [{"rfilename": path, "size": len(content), "blobId": _git_blob_sha1(content),
                 "lfs": {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}}
                for path, content in sorted(commit.files.items())] if commit else []
    return {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": commit.oid if commit else None,
            "private": False, "disabled": False, "gated": False, "xetEnabled": False, "tags": [], "downloads": 0,
            "likes": 0, "lastModified": commit.date if commit else None, "siblings": siblings}


class _Handler(BaseHTTPRequestHandler):
    server_hub: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: tests read self.server_hub.requests instead
        pass

    # -- helpers ----------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: Optional[Dict[str, str]] = None, body: Optional[bytes] = None,
              head: bool = False) -> None:
        if body is None:
            body = json.dumps(payload if payload is not None else {}).encode()
            headers = dict(headers or {}, **{"Content-Type": "application/json"})
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self._send(status, {"error": message}, headers={"X-Error-Code": code, "X-Error-Message": message}, head=head)

    # -- routes -----------------------------------------------------------------------------------------------
    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        self.server_hub.requests.append(("POST", path))
        body = self._body()
        if path == "/api/repos/create":
            data = json.loads(body or b"{}")
            name = data.get("name", "")
            repo_id = f"{data['organization']}/{name}" if data.get("organization") else name
            created = self.server_hub.create_repo(repo_id)
            payload = {"url": f"{self.server_hub.url}/{repo_id}", "name": repo_id}
            if not created:
                payload["error"] = "You already created this model repo"
            return self._send(200 if created else 409, payload)
        if path == "/api/validate-yaml":
            return self._validate_card(json.loads(body or b"{}").get("content", ""))
        if path.startswith("/api/models/") and "/preupload/" in path:
            repo_id = path[len("/api/models/"):].split("/preupload/")[0]
            data = json.loads(body or b"{}")
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in data.get("files", [])]
            return self._send(200, {"files": files})
        if path.startswith("/api/models/") and "/commit/" in path:
            repo_id, branch = path[len("/api/models/"):].split("/commit/")
            if self.server_hub.lookup(repo_id, branch, "")[0] == "RepoNotFound":
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            files, deleted, message = {}, [], ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item.get("value", {})
                if item.get("key") == "header":
                    message = value.get("summary", "")
                elif item.get("key") == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item.get("key") == "deletedFile":
                    deleted.append(value["path"])
                elif item.get("key") == "lfsFile":
                    return self._error(400, "BadRequest", "this loopback hub takes inline (regular) uploads only")
            oid = self.server_hub.commit(repo_id, branch, files, deleted, message)
            return self._send(200, {"commitUrl": f"{self.server_hub.url}/{repo_id}/commit/{oid}",
                                    "commitOid": oid, "success": True})
        return self._unrouted("POST", path)

    def _unrouted(self, method: str, path: str, head: bool = False) -> None:
        self.server_hub.unrouted.append((method, path))
        return self._error(404, "NotFound", f"no route for {method} {path}", head=head)

    def _validate_card(self, content: str) -> None:
        """The Hub checks a model card's YAML front matter on upload; so do we (a mapping, valid YAML)."""
        import yaml

        errors = []
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(front)
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a YAML mapping"})
            except yaml.YAMLError as e:
                errors.append({"message": f"invalid YAML: {e}"})
        if errors:
            return self._send(400, {"errors": errors, "warnings": []}, headers={"X-Error-Code": "BadRequest"})
        return self._send(200, {"errors": [], "warnings": []})

    def _api_get(self, path: str, head: bool) -> None:
        """Model info (``/api/models/<repo>`` or ``.../revision/<rev>``) and tree listings."""
        rest = path[len("/api/models/"):]
        if "/tree/" in rest:
            repo_id, _, tail = rest.partition("/tree/")
            revision, _, folder = tail.partition("/")
        else:
            repo_id, _, revision = rest.partition("/revision/")
            revision, folder = revision or "main", ""
        if repo_id.count("/") > 1:
            return self._unrouted("HEAD" if head else "GET", path, head=head)
        error, commit = self.server_hub.snapshot(repo_id, revision)
        if error == "RepoNotFound":
            return self._error(404, error, f"Repository {repo_id} not found", head=head)
        if error == "RevisionNotFound" and "/tree/" not in rest and revision == "main":
            return self._send(200, _model_info(repo_id, None), head=head)  # a repo with no commit yet
        if error:
            return self._error(404, error, f"Invalid rev id: {revision}", head=head)
        if "/tree/" not in rest:
            return self._send(200, _model_info(repo_id, commit), head=head)
        recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder.rstrip('/')}/" if folder else ""
        entries, folders = [], set()
        for file_path, content in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            inner = file_path[len(prefix):]
            if "/" in inner and not recursive:
                folders.add(prefix + inner.split("/", 1)[0])
                continue
            if recursive:
                parts = inner.split("/")[:-1]
                folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            entries.append(_file_entry(file_path, content))
        if folder and not entries and not folders:
            return self._error(404, "EntryNotFound", f"{folder} does not exist at {revision}", head=head)
        listing = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                   for f in sorted(folders)] + entries
        return self._send(200, listing, head=head)

    def _resolve(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.server_hub.requests.append(("HEAD" if head else "GET", path))
        if path.startswith("/api/models/"):
            return self._api_get(path, head)
        if "/resolve/" not in path:
            return self._unrouted("HEAD" if head else "GET", path, head=head)
        repo_id, rest = path.lstrip("/").split("/resolve/", 1)
        repo_id = repo_id[len("models/"):] if repo_id.startswith("models/") else repo_id
        revision, _, file_path = rest.partition("/")
        error, oid, content = self.server_hub.lookup(repo_id, revision, file_path)
        if error == "RepoNotFound":
            return self._error(404, error, f"Repository {repo_id} not found", head=head)
        if error == "RevisionNotFound":
            return self._error(404, error, f"Invalid rev id: {revision}", head=head)
        if error == "EntryNotFound":
            return self._error(404, error, f"{file_path} does not exist at {revision}", head=head)
        etag = hashlib.sha256(content).hexdigest()
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        self._send(200, headers=headers, body=content, head=head)

    def do_HEAD(self):
        self._resolve(head=True)

    def do_GET(self):
        self._resolve(head=False)
