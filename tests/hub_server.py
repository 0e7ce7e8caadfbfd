"""A loopback stand-in for the Hugging Face Hub, enough for `huggingface_hub` to list and download a repo.

It serves, over plain HTTP on 127.0.0.1, the endpoints `snapshot_download` / `hf_hub_download` call:

- `GET /api/models/{repo}/revision/{rev}`: the repo info (`sha` = the commit the revision points to, `siblings`);
- `GET /api/models/{repo}/tree/{rev}[/{folder}]`: the file listing (`recursive=true` lists sub-folders too);
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: the file, with `X-Repo-Commit`, `ETag` (the git blob id, as the Hub
  sends for a non-LFS file) and `Content-Length`.

Errors use the Hub's own signals (`X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound | GatedRepo`
and the status codes the Hub uses), because `huggingface_hub` turns those into its typed errors. Every request is
recorded in `StandInHub.requests`, so a test can count what a command fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def _git_blob_id(data: bytes) -> str:
    # The id git gives a file's content; the Hub uses it as the ETag of small (non-LFS) files.
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repo: commits (sha → {path: bytes}) and the names that point at them (branches, tags).

    `private_token`: the repo answers only requests carrying this token (others get 401, as the Hub answers for a
    private repo). `gated_token`: the repo info is public, but files need this token (401 without a token, 403
    with another one).
    """

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    private_token: str | None = None
    gated_token: str | None = None

    def commit(self, files: dict[str, str | bytes], *, ref: str | None = "main") -> str:
        """Add a commit holding `files`; point `ref` at it; return its sha."""
        blobs = {path: data.encode("utf-8") if isinstance(data, str) else data for path, data in files.items()}
        digest = hashlib.sha1(json.dumps(sorted((p, _git_blob_id(b)) for p, b in blobs.items())).encode())
        sha = digest.hexdigest()
        self.commits[sha] = blobs
        if ref is not None:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class StandInHub:
    """The server and its state; use as a context manager (`with StandInHub() as hub: hub.url`)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll: `shutdown` waits for the serving loop to notice it, half a second per test by default.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, repo_id: str, **options: str | None) -> Repo:
        """The repo `repo_id`, created on first use (with `private_token` / `gated_token` options)."""
        if repo_id not in self.repos:
            self.repos[repo_id] = Repo(**options)
        return self.repos[repo_id]

    def file_requests(self) -> list[tuple[str, str]]:
        """The requests for file contents or file metadata (`/resolve/`), not the API listing calls."""
        with self._lock:
            return [r for r in self.requests if "/resolve/" in r[1]]

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Refusal(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


def _handler_for(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        # --------------------------------------------------------------------------------------------- routing

        def _serve(self, *, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.log(self.command, path)
            try:
                if path.startswith("/api/models/"):
                    self._api(path[len("/api/models/") :], parse_qs(url.query), body=body)
                elif "/resolve/" in path:
                    self._resolve(path.lstrip("/"), body=body)
                else:
                    raise _Refusal(404, None, "Not Found")
            except _Refusal as refusal:
                headers = {"X-Error-Message": refusal.message}
                if refusal.code:
                    headers["X-Error-Code"] = refusal.code
                if refusal.commit:
                    headers["X-Repo-Commit"] = refusal.commit
                self._send(refusal.status, json.dumps({"error": refusal.message}).encode(), headers, body=body)

        def _repo(self, repo_id: str, *, files: bool) -> Repo:
            repo = hub.repos.get(repo_id)
            auth = self.headers.get("Authorization", "")
            if repo is None:
                raise _Refusal(404 if not auth else 401, "RepoNotFound", "Repository not found")
            if repo.private_token is not None and auth != f"Bearer {repo.private_token}":
                if auth:
                    raise _Refusal(401, None, "Invalid credentials in Authorization header")
                raise _Refusal(401, "RepoNotFound", "Invalid username or password.")
            if files and repo.gated_token is not None and auth != f"Bearer {repo.gated_token}":
                if not auth:
                    raise _Refusal(401, "GatedRepo", f"Access to model {repo_id} is restricted. Please log in.")
                raise _Refusal(403, "GatedRepo", f"Access to model {repo_id} is restricted; you are not in the list.")
            return repo

        def _commit(self, repo: Repo, revision: str) -> str:
            sha = repo.resolve(revision)
            if sha is None:
                raise _Refusal(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return sha

        def _api(self, rest: str, query: dict[str, list[str]], *, body: bool) -> None:
            for marker in ("/revision/", "/tree/"):
                if marker in rest:
                    repo_id, tail = rest.split(marker, 1)
                    break
            else:
                raise _Refusal(404, None, "Not Found")
            repo = self._repo(repo_id, files=False)
            revision, _, folder = tail.partition("/")
            sha = self._commit(repo, revision)
            files = repo.commits[sha]
            if marker == "/revision/":
                info = {"id": repo_id, "sha": sha, "private": repo.private_token is not None}
                info["gated"] = "manual" if repo.gated_token is not None else False
                info["siblings"] = [{"rfilename": p} for p in sorted(files)]
                self._send_json(info, body=body)
                return
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            prefix = folder.rstrip("/") + "/" if folder else ""
            entries: dict[str, dict[str, object]] = {}
            for path in sorted(files):
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                for depth in range(1, len(parts)):  # the folders on the way
                    sub = prefix + "/".join(parts[:depth])
                    if depth == 1 or recursive:
                        entries.setdefault(sub, {"type": "directory", "oid": "0" * 40, "size": 0, "path": sub})
                if len(parts) == 1 or recursive:
                    data = files[path]
                    entries[path] = {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": path}
            self._send_json(list(entries.values()), body=body)

        def _resolve(self, rest: str, *, body: bool) -> None:
            repo_id, tail = rest.split("/resolve/", 1)
            repo = self._repo(repo_id, files=True)
            revision, _, filename = tail.partition("/")
            sha = self._commit(repo, revision)
            data = repo.commits[sha].get(filename)
            if data is None:
                raise _Refusal(404, "EntryNotFound", f"{filename} does not exist", commit=sha)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_blob_id(data)}"', "Content-Type": "text/plain"}
            self._send(200, data, headers, body=body)

        # ------------------------------------------------------------------------------------------- sending

        def _send_json(self, value: object, *, body: bool) -> None:
            self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, body=body)

        def _send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler
