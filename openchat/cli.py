"""`openchat` command line: `openchat dev-model [DIR]`, `openchat ingest PATH...`,
`openchat documents list|delete|search`, `openchat keys create|list|revoke`
(more subcommands join as features land)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_DEV_MODEL_DIR = Path(".models/openchat-dev")


def _dev_model(args: argparse.Namespace) -> int:
    from openchat.devmodel import build_dev_model

    path = build_dev_model(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"dev model ready at {path}")
    return 0


def _reporting(handler: Callable[[argparse.Namespace], int]):
    """Bad names, unknown collections, an unreachable server: one line, exit status 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ValueError, LookupError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _document_store():
    """The store the service uses: documents settings from configuration.yaml and env."""
    from openchat.config import get_settings
    from tools.documents import DocumentStore
    from tools.embeddings import Embedder

    return DocumentStore(get_settings().documents, Embedder())


def _collection(args: argparse.Namespace) -> str:
    from openchat.config import get_settings
    from tools.documents import check_collection_name

    return check_collection_name(args.collection or get_settings().documents.default_collection)


def find_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files to ingest: named files as given, directories walked for supported suffixes
    (hidden entries skipped); plus a message for every path that does not exist."""
    from tools.readers import is_supported

    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(
                p for p in path.rglob("*")
                if p.is_file() and is_supported(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        else:
            problems.append(f"{path}: no such file or directory")
    return list(dict.fromkeys(files)), problems


@_reporting
def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    collection = _collection(args)
    files, problems = find_files(args.paths)
    if not files:
        problems.append("no supported files (.txt, .md, .html, .pdf) to ingest")
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    store = _document_store()
    statuses: Counter[str] = Counter()
    chunks = 0
    # disable=None: a bar on a terminal, plain output in logs and pipes.
    for path in tqdm(files, desc=f"ingest -> {collection}", unit="file", disable=None):
        try:
            result = store.add_file(path, collection)
        except Exception as exc:  # one bad file must not stop the others
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        statuses[result.status] += 1
        chunks += result.chunks
    for status in ("added", "replaced", "unchanged"):
        print(f"{status}: {statuses[status]}")
    print(f"{sum(statuses.values())} of {len(files)} files, {chunks} chunks, "
          f"in collection {collection!r}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


@_reporting
def _documents_list(args: argparse.Namespace) -> int:
    for doc in _document_store().list_documents(_collection(args)):
        print(f"{doc.id}  {doc.chunks:4d} chunks  {doc.ingested_at}  {doc.source}")
    return 0


@_reporting
def _documents_delete(args: argparse.Namespace) -> int:
    collection = _collection(args)
    if _document_store().delete_document(collection, args.document_id):
        print(f"deleted {args.document_id} from {collection!r}")
        return 0
    print(f"error: no document {args.document_id} in {collection!r}", file=sys.stderr)
    return 1


@_reporting
def _documents_search(args: argparse.Namespace) -> int:
    for hit in _document_store().search(_collection(args), args.query, args.top_k):
        print(f"{hit.score:.3f}  {hit.id}  {hit.source}\n    {' '.join(hit.text.split())[:200]}")
    return 0


@contextmanager
def _key_store() -> Iterator:
    """The key store the service uses (auth.keys_url from configuration.yaml and env)."""
    from sqlalchemy.exc import SQLAlchemyError

    from openchat.access.keys import KeyStore
    from openchat.config import get_settings

    store = None
    try:
        store = KeyStore(get_settings().auth.keys_url)
        yield store
    except SQLAlchemyError as exc:  # unreachable server, wrong password: one line, no trace
        raise OSError(f"key database: {getattr(exc, 'orig', None) or exc}") from exc
    finally:
        if store is not None:
            store.dispose()


def _limits(key) -> str:
    """Effective limits; a `*` marks the configured default (the key has none of its own)."""
    from openchat.config import get_settings

    auth = get_settings().auth
    return "  ".join(
        f"{label}={default if own is None else own}{'*' if own is None else ''}"
        for label, own, default in (("rpm", key.rpm, auth.default_rpm),
                                    ("tpm", key.tpm, auth.default_tpm),
                                    ("concurrency", key.max_concurrency,
                                     auth.default_max_concurrency)))


def _when(moment) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%MZ")


@_reporting
def _keys_create(args: argparse.Namespace) -> int:
    with _key_store() as store:
        key, secret = store.create(args.name, args.scopes.split(","), rpm=args.rpm,
                                   tpm=args.tpm, max_concurrency=args.concurrency)
    print(f"secret: {secret}")
    print("This secret will not be shown again: store it now (only its hash is kept).")
    print(f"id:     {key.id}\nname:   {key.name}\nscopes: {key.scopes}")
    print(f"limits: {_limits(key)}  (* = the configured default)")
    return 0


@_reporting
def _keys_list(args: argparse.Namespace) -> int:
    with _key_store() as store:
        keys = store.list(include_revoked=args.all)
    header = ("ID", "NAME", "PREFIX", "SCOPES", "LIMITS (* = default)", "CREATED", "REVOKED")
    rows = [header] + [(k.id, k.name, k.prefix + "...", ",".join(k.scopes.split()),
                        _limits(k), _when(k.created_at), _when(k.revoked_at)) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not keys:
        print("no keys" if args.all else "no live keys (--all shows revoked ones)")
    return 0


@_reporting
def _keys_revoke(args: argparse.Namespace) -> int:
    with _key_store() as store:
        key = store.get(args.key_id)
        if store.revoke(args.key_id):
            print(f"revoked {args.key_id} ({key.name})")
            return 0
    problem = "is already revoked" if key is not None else "does not exist"
    print(f"error: key {args.key_id} {problem}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openchat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser(
        "dev-model", help="build the small random-weight OpenChat checkpoint for tests"
    )
    dev.add_argument("out", nargs="?", type=Path, default=DEFAULT_DEV_MODEL_DIR)
    dev.add_argument("--seed", type=int, default=0)
    dev.add_argument("--overwrite", action="store_true", help="rebuild even if present")
    dev.set_defaults(handler=_dev_model)

    collection = argparse.ArgumentParser(add_help=False)
    collection.add_argument("--collection", "-c",
                            help="document collection (default: documents.default_collection)")

    ingest = commands.add_parser(
        "ingest", parents=[collection],
        help="add files to the document store (directories: every .txt/.md/.html/.pdf)")
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ingest.set_defaults(handler=_ingest)

    documents = commands.add_parser("documents", help="inspect the document store")
    actions = documents.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[collection], help="documents of a collection")
    listing.set_defaults(handler=_documents_list)
    delete = actions.add_parser("delete", parents=[collection], help="remove one document")
    delete.add_argument("document_id")
    delete.set_defaults(handler=_documents_delete)
    search = actions.add_parser("search", parents=[collection], help="try a query")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=5)
    search.set_defaults(handler=_documents_search)

    keys = commands.add_parser("keys", help="manage API keys (auth.keys_url)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="a new key; its secret is shown once")
    create.add_argument("name", help="a label for people, e.g. the team or app using it")
    create.add_argument("--scopes", default="inference",
                        help="comma-separated: inference, tools:sql, tools:documents, "
                             "documents:write, admin (default: inference)")
    create.add_argument("--rpm", type=int, help="requests per minute (default: auth.default_rpm)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: auth.default_tpm)")
    create.add_argument("--concurrency", type=int,
                        help="requests in flight (default: auth.default_max_concurrency)")
    create.set_defaults(handler=_keys_create)
    key_list = key_actions.add_parser("list", help="keys without their secrets")
    key_list.add_argument("--all", action="store_true", help="include revoked keys")
    key_list.set_defaults(handler=_keys_list)
    revoke = key_actions.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
