"""Checkpoints on object storage (S3 or any S3-compatible server), through pyarrow's filesystems.

A checkpoint root may be a local folder or an ``s3://bucket/prefix`` URI. On S3 a checkpoint is the same
folder as on disk (``step-<8 digits>/`` with ``checksums.json``, see :mod:`engine.checkpoints`), uploaded
with its ``checksums.json`` last: the checksums are the completeness marker, so an upload cut by a kill
leaves a folder that :func:`fetch_latest_valid` skips (a file is missing or does not match), never one
a resume would take for complete. During training the step checkpoints are uploaded by Ray Train itself
(``ray.train.report`` with ``RunConfig(storage_path, storage_filesystem)`` from :func:`ray_storage`), so
the bucket holds the only copy; outside Ray (:func:`upload_folder`) the same layout is written directly.

A corpus (or any read-only folder) is published the same way (:func:`publish_folder`: its files, then a
``checksums.json`` computed on the way, last) and read through a node-local cache (:func:`cached_folder`):
each node downloads it once, streaming in 1 MiB chunks, checks every file against the checksums, and
renames it into place, so workers memory-map a local copy and their memory does not grow with the corpus.
The cache key is the hash of the remote ``checksums.json``: a republished corpus with other content is a
new key, never a stale copy.

Credentials and endpoint come from the usual AWS variables: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` (default us-east-1) and, for a server other than AWS
(MinIO, moto, Ceph), ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://127.0.0.1:9000``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"


def is_remote(uri: str | os.PathLike | None) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def s3_filesystem():
    """A pyarrow S3 filesystem configured from the AWS environment variables (see the module docstring)."""
    from pyarrow import fs as pafs

    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    return pafs.S3FileSystem(**kwargs)


def split(uri: str) -> tuple[object, str]:
    """(pyarrow filesystem, path on it) for an ``s3://`` URI or a local path."""
    from pyarrow import fs as pafs

    if is_remote(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        return s3_filesystem(), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def ray_storage(uri: str) -> tuple[str, str, object]:
    """(storage_path, experiment name, storage_filesystem) for Ray Train's ``RunConfig`` such that Ray writes
    a reported checkpoint named ``step-N`` to ``<uri>/step-N``."""
    fs, path = split(uri)
    parent, _, name = path.rpartition("/")
    if not parent or not name:
        raise ValueError(f"checkpoint URI {uri!r} needs a prefix under the bucket (s3://bucket/some/prefix)")
    return parent, name, fs


def upload_folder(local: str | Path, uri: str) -> None:
    """Copy a local folder to ``uri``: every file, then ``checksums.json`` last (the completeness marker)."""
    fs, dest = split(uri)
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for p in sorted(files, key=lambda q: q.name == CHECKSUMS):
        with open(p, "rb") as src, fs.open_output_stream(f"{dest}/{p.relative_to(local).as_posix()}") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def download_folder(uri: str, local: str | Path) -> Path:
    """Copy every file under ``uri`` into the local folder (created); returns it."""
    from pyarrow import fs as pafs

    fs, src = split(uri)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        target = local / info.path[len(src):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as inp, open(target, "wb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)
    return local


def exists(uri: str) -> bool:
    from pyarrow import fs as pafs

    fs, path = split(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_checkpoints(uri: str) -> list[str]:
    """URIs of the ``step-*`` folders directly under ``uri``, oldest first by step."""
    from pyarrow import fs as pafs

    fs, root = split(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    steps = [i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("step-")
             and i.base_name[5:].isdigit()]
    return [join(uri, name) for name in sorted(steps, key=lambda n: int(n[5:]))]


def fetch_valid(uri: str, local: str | Path) -> Path | None:
    """Download the checkpoint at ``uri`` into ``local`` and return it if its checksums match; else None
    (the download is removed) with a warning saying why."""
    from engine.checkpoints import verify

    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-download-{local.name}-", dir=local.parent))
    folder = download_folder(uri, tmp / local.name)
    problem = verify(folder)
    if problem is None:
        shutil.rmtree(local, ignore_errors=True)
        os.replace(folder, local)  # a kill during the download leaves only the .tmp folder
        shutil.rmtree(tmp, ignore_errors=True)
        return local
    log.warning("skipping checkpoint %s: %s (an interrupted upload?); falling back to the previous one", uri, problem)
    shutil.rmtree(tmp, ignore_errors=True)
    return None


def fetch_latest_valid(uri: str, cache: str | Path) -> Path | None:
    """The newest checkpoint under ``uri`` whose files all match their checksums, downloaded into
    ``cache``; incomplete or corrupted ones are skipped with a warning. None if there is none."""
    for ckpt in reversed(list_checkpoints(uri)):
        folder = fetch_valid(ckpt, Path(cache) / ckpt.rsplit("/", 1)[1])
        if folder is not None:
            return folder
    return None


def delete(uri: str) -> None:
    fs, path = split(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:  # deleted meanwhile (another writer's prune)
        pass


def prune(uri: str, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints under ``uri`` (outside Ray Train, which prunes
    its own)."""
    if keep <= 0:
        return
    for old in list_checkpoints(uri)[:-keep]:
        delete(old)


def scratch_dir(what: str) -> Path:
    """A private local folder for a checkpoint on its way to object storage."""
    return Path(tempfile.mkdtemp(prefix=f"spactor-{what}-"))


def read_bytes(uri: str) -> bytes:
    fs, path = split(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def publish_folder(local: str | Path, uri: str) -> str:
    """Upload a finished local folder (a corpus) to ``uri`` as a read-only object: every file, then a
    ``checksums.json`` of them last, the completeness marker :func:`cached_folder` requires. A folder already
    published there with the same content is left as it is. Returns ``uri``."""
    from engine.checkpoints import folder_checksums

    local = Path(local)
    sums = json.dumps(folder_checksums(local), indent=2, sort_keys=True).encode()
    try:
        published = read_bytes(join(uri, CHECKSUMS))  # one request; absent means never (fully) published
    except FileNotFoundError:
        published = None
    if published == sums:
        log.info("%s already holds this folder (same checksums); not uploading again", uri)
        return uri
    fs, dest = split(uri)
    for p in sorted(q for q in local.rglob("*") if q.is_file() and q.name != CHECKSUMS):
        with open(p, "rb") as src, fs.open_output_stream(f"{dest}/{p.relative_to(local).as_posix()}") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    with fs.open_output_stream(f"{dest}/{CHECKSUMS}") as out:
        out.write(sums)
    return uri


def cache_root() -> Path:
    """Where downloaded objects live on this node: ``SPACTOR_CACHE_DIR``, else ``~/.cache/spactor``."""
    return Path(os.environ.get("SPACTOR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                             Path.home() / ".cache") / "spactor").absolute()


def cached_folder(uri: str, cache: str | Path | None = None, *, only: tuple[str, ...] = ()) -> Path:
    """A verified local copy of the folder published at ``uri`` (:func:`publish_folder`), downloaded once per
    node and content: concurrent callers on one node wait on a lock and share one download. Raises
    FileNotFoundError, naming the URI, when the folder has no ``checksums.json`` (not published, or its upload
    was cut) and ValueError when a downloaded file does not match it.

    ``only``: copy just the files under these sub-folders (``("tokenizer/", "packed/validation/")``: a worker that
    streams its training shards needs no local copy of them); such a partial copy is its own cache entry, whose
    ``checksums.json`` lists the files it holds."""
    from engine.checkpoints import verify

    marker = join(uri, CHECKSUMS)
    try:
        sums = read_bytes(marker)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} has no {CHECKSUMS}: not a published folder, or its upload was cut; "
                                "publish it with python -m flows.corpus_prep --set publish_uri=...") from None
    root = Path(cache) if cache is not None else cache_root() / "objects"
    root.mkdir(parents=True, exist_ok=True)
    name = uri.rstrip("/").rsplit("/", 1)[1]
    key = sums + (json.dumps(sorted(only)).encode() if only else b"")
    final = root / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}"
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; others wait, then find it in place
        if final.is_dir():
            return final
        for stale in root.glob(f".tmp-{final.name}-*"):  # a download killed midway (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
        try:
            if only:
                wanted = {n: d for n, d in json.loads(sums).items() if n.startswith(tuple(only))}
                if not wanted:
                    raise FileNotFoundError(f"{uri} holds no files under {', '.join(only)}")
                fs, src = split(uri)
                for rel in wanted:
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with fs.open_input_stream(f"{src}/{rel}") as inp, open(target, "wb") as out:
                        shutil.copyfileobj(inp, out, 1 << 20)
                (tmp / CHECKSUMS).write_text(json.dumps(wanted, indent=2, sort_keys=True))
            else:
                download_folder(uri, tmp)
                (tmp / CHECKSUMS).write_bytes(sums)  # the version we keyed on, whatever was uploaded meanwhile
            problem = verify(tmp)
            if problem is not None:
                raise ValueError(f"{uri}: {problem}; republish it")
            os.replace(tmp, final)  # only a verified copy is ever in place
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def local_folder(path_or_uri: str | Path, *, only: tuple[str, ...] = ()) -> Path:
    """A local path as it is; an ``s3://`` folder through :func:`cached_folder` (``only``: just those sub-folders)."""
    return cached_folder(path_or_uri, only=only) if is_remote(path_or_uri) else Path(path_or_uri)
