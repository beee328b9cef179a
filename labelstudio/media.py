"""Fetch a task's image, safely.

    /data/local-files/?d=PATH   read from LOCAL_FILES_DOCUMENT_ROOT when set (path traversal refused), else
                                downloaded from Label Studio
    /data/upload/..., upload/…  Label Studio uploads: downloaded from LABEL_STUDIO_URL with the API key
    other /paths                downloaded from LABEL_STUDIO_URL with the API key
    s3:// gs:// azure-blob://   LS's presign endpoint for the task (the redirect target's host must be in
                                MEDIA_ALLOWED_HOSTS)
    http(s)://HOST/...          only LS's host or MEDIA_ALLOWED_HOSTS ("*" = any public host); the API key is
                                sent to LS's host only
    data:image/...;base64,...   decoded inline
    file:// and anything else   refused

SSRF guard: every address a host resolves to must be public, except for LS's own host and hosts named
explicitly in MEDIA_ALLOWED_HOSTS (so an LS on localhost or a private network works). Redirects are followed
by hand (at most 3) and each hop is checked again. Downloads have timeouts and a size limit.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple
from urllib.parse import parse_qs, urljoin, urlsplit

import numpy as np
import requests

from formats.image_source import ImageLoadError, is_tiff
from formats.images import image_dimensions, load_image
from formats.raster import load_raster

from .client import LabelStudioClient

MAX_REDIRECTS = 3
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")


class MediaError(ValueError):
    """The image cannot (or may not) be fetched; the message says why."""


@dataclass(frozen=True)
class MediaPolicy:
    """Where task images may come from, how big they may be, and how (Geo)TIFFs become RGB.

    The service builds it from its settings (`jobs.settings.Settings.media_policy()`); `refseg export` builds
    one for a user's own project. The defaults here are the deployment defaults.
    """

    document_root: str = ""  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT, read directly when set
    allowed_hosts: Tuple[str, ...] = ()  # hosts besides Label Studio's; "*" = any public host
    max_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 150_000_000  # refused before decoding (~0.4 GiB as RGB)
    timeout_s: float = 30.0
    verify_ssl: bool = True
    # (Geo)TIFF rendering: 1-based bands ("4,3,2"; "" = 1,2,3) and stretch (auto|none|minmax|"2,98"), with
    # per-project overrides (project, bands, stretch)
    raster_bands: str = ""
    raster_stretch: str = "auto"
    raster_projects: Tuple[Tuple[str, str, str], ...] = ()

    def raster_for(self, project) -> Tuple[str, str]:
        """(bands, stretch) for (Geo)TIFF images of `project`: its per-project entry, else the defaults."""
        for p, bands, stretch in self.raster_projects:
            if p == str(project):
                return bands, stretch
        return self.raster_bands, self.raster_stretch


class MediaFetcher:
    def __init__(self, policy: MediaPolicy, ls: LabelStudioClient) -> None:
        self.ls = ls
        self.policy = policy
        self.doc_root = Path(policy.document_root).resolve() if policy.document_root else None
        self.allowed = set(policy.allowed_hosts)
        self.max_bytes = int(policy.max_bytes)
        self.max_pixels = int(policy.max_pixels)
        self.timeout = (5.0, float(policy.timeout_s))
        self.verify = policy.verify_ssl
        self.session = requests.Session()

    def image(self, url: str, task_id=None, project=None) -> np.ndarray:
        """H x W x 3 uint8 (raises MediaError, or formats.image_source.ImageLoadError for undecodable data).
        (Geo)TIFFs are rendered with the project's bands and stretch (MediaPolicy.raster_for), the same way for
        predictions and for fine-tuning."""
        data = self.fetch(url, task_id)
        w, h = image_dimensions(data)  # header only: refuse before decoding (3 bytes per pixel once decoded)
        if w * h > self.max_pixels:
            raise ImageLoadError(
                f"image of {w}x{h} pixels exceeds MEDIA_MAX_PIXELS={self.max_pixels} (it would take "
                f"{3 * w * h / 2**30:.1f} GiB decoded in the worker); downscale it for annotation, or segment the "
                f"full scene with `refseg predict --strategy auto`")
        bands, stretch = self.policy.raster_for(project)
        if (bands or stretch != "auto") and is_tiff(data):
            return load_raster(data, bands or None, stretch).pixels
        return load_image(data)

    # -------------------------------------------------------------------------------------------- routing
    def fetch(self, url: str, task_id=None) -> bytes:
        url = url.strip()
        if url.startswith("data:"):
            return self._data_uri(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise MediaError(f"{scheme}:// URL needs a task id to be presigned by Label Studio")
            uri = base64.urlsafe_b64encode(url.encode()).decode()
            return self._http(self._ls_url(f"/tasks/{task_id}/presign/?fileuri={uri}"))
        if scheme == "":
            path = url if url.startswith("/") else "/data/" + url if url.startswith("upload/") else None
            if path is None:
                raise MediaError(f"relative image URL {url!r} is neither an LS path (/data/...) nor upload/...")
            if path.startswith("/data/local-files") and self.doc_root is not None:
                return self._local_file(path)
            if path.startswith("/data/upload/"):
                return self._ls_upload(path)
            return self._http(self._ls_url(path))
        if scheme in ("http", "https"):
            if self.doc_root is not None and self._is_ls_host(parts) and parts.path.startswith("/data/local-files"):
                return self._local_file(parts.path + ("?" + parts.query if parts.query else ""))
            return self._http(url)
        raise MediaError(f"unsupported image URL scheme {scheme!r} (allowed: http, https, LS paths, "
                         f"{', '.join(s + '://' for s in CLOUD_SCHEMES)}, data:)")

    def _ls_url(self, path: str) -> str:
        if not self.ls.url:
            raise MediaError(f"{path}: LABEL_STUDIO_URL is not set, cannot download Label Studio media")
        return self.ls.url + path

    def _ls_upload(self, path: str) -> bytes:
        try:
            return self._http(self._ls_url(path))
        except MediaError as first:
            # newer LS serves uploads under /storage-data/uploaded/ (what label-studio-sdk's get_local_path does)
            alt = "/storage-data/uploaded/?filepath=" + path[len("/data/"):]
            try:
                return self._http(self._ls_url(alt))
            except MediaError:
                raise first from None

    # ------------------------------------------------------------------------------------------ local files
    def _local_file(self, path_and_query: str) -> bytes:
        query = urlsplit(path_and_query).query
        d = (parse_qs(query).get("d") or [""])[0]
        if not d:
            raise MediaError(f"{path_and_query}: no ?d= path")
        root = self.doc_root
        target = (root / d).resolve()  # resolves .. and symlinks before the containment check
        if target != root and root not in target.parents:
            raise MediaError(f"{d!r} is outside LOCAL_FILES_DOCUMENT_ROOT")
        if not target.is_file():
            raise MediaError(f"{d!r} not found under LOCAL_FILES_DOCUMENT_ROOT")
        if target.stat().st_size > self.max_bytes:
            raise MediaError(f"{d!r} is larger than MEDIA_MAX_BYTES={self.max_bytes}")
        return target.read_bytes()

    def _data_uri(self, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise MediaError("only base64 data: URIs are supported")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise MediaError(f"data: URI larger than MEDIA_MAX_BYTES={self.max_bytes}")
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"bad base64 in data: URI ({exc})") from None

    # ------------------------------------------------------------------------------------------------ http
    def _is_ls_host(self, parts) -> bool:
        if not self.ls.url:
            return False
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return ((parts.hostname or "").lower(), port) == self.ls.netloc

    def _check(self, url: str) -> bool:
        """Raise MediaError unless `url` may be fetched; returns whether it is Label Studio's host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MediaError(f"refusing {url!r}: only http(s) URLs with a host")
        host = parts.hostname.lower()
        is_ls = self._is_ls_host(parts)
        named = host in self.allowed
        if not (is_ls or named or "*" in self.allowed):
            raise MediaError(f"refusing {host}: not Label Studio's host and not in MEDIA_ALLOWED_HOSTS")
        if not (is_ls or named):
            for ip in _resolve(host, parts.port or (443 if parts.scheme == "https" else 80)):
                if not ip.is_global or ip.is_multicast:
                    raise MediaError(f"refusing {host}: resolves to non-public address {ip} "
                                     "(name the host in MEDIA_ALLOWED_HOSTS to allow it)")
        return is_ls

    def _http(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            is_ls = self._check(url)
            try:
                if is_ls:
                    r = self.ls.request("GET", url, stream=True, timeout=self.timeout, allow_redirects=False)
                else:
                    r = self.session.get(url, stream=True, timeout=self.timeout, allow_redirects=False,
                                         verify=self.verify)
            except requests.RequestException as exc:
                raise MediaError(f"{_short(url)}: {type(exc).__name__}: {exc}") from None
            except Exception as exc:  # e.g. LabelStudioError: no API key
                raise MediaError(f"{_short(url)}: {exc}") from None
            with r:
                if r.is_redirect and r.headers.get("location"):
                    url = urljoin(url, r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise MediaError(f"{_short(url)}: HTTP {r.status_code}")
                declared = r.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise MediaError(f"{_short(url)}: {declared} bytes > MEDIA_MAX_BYTES={self.max_bytes}")
                chunks, size = [], 0
                for chunk in r.iter_content(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaError(f"{_short(url)}: more than MEDIA_MAX_BYTES={self.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise MediaError(f"{_short(url)}: more than {MAX_REDIRECTS} redirects")


def _resolve(host: str, port: int):
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaError(f"cannot resolve {host}: {exc}") from None
    out = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        out.append(ip)
    return out


def _short(url: str, n: int = 120) -> str:
    """URL for error messages: no query string (presigned URLs carry credentials there)."""
    parts = urlsplit(url)
    s = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return s if len(s) <= n else s[: n - 3] + "..."

